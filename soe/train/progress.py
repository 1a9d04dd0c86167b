"""The training bar counts optimizer steps of ``trainer.max_steps``, with tokens/s and an ETA.

Lightning's bar counts batches of an epoch; the training data is an endless stream, so its total is unknown
and it read "Epoch 0" (or "Epoch 0/-2") with no end in sight. `StepProgressBar` reads, e.g.

    train: 45%|████▌     | step 18/40 [00:03<00:04 ETA, loss 7.21, 41,230 tok/s]

Steps are ``trainer.global_step`` (a resumed run starts its bar where the checkpoint stopped, and the rate and
ETA count this run's steps only). soe/train/cli.py adds it to every training run whose config names no progress
bar of its own; ``trainer.enable_progress_bar: false`` turns it off. Validation keeps Lightning's bar.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar

SHOWN = {"loss/train": "loss", "throughput/tokens_per_s": "tok/s"}  # logged name -> label on the bar


class StepProgressBar(TQDMProgressBar):
    STEP_FORMAT = "{desc}{percentage:3.0f}%|{bar:10}| step {n_fmt}/{total_fmt} [{elapsed}<{remaining} ETA{postfix}]"
    DESCRIPTION = "train"

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.bar_format = self.STEP_FORMAT
        return bar

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        if trainer.max_steps is None or trainer.max_steps <= 0:  # no step budget: Lightning's epoch bar
            return super().on_train_epoch_start(trainer, *_)
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:  # the first epoch (an endless stream has only one)
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step  # rate and ETA from this run's own steps
        bar.set_description(self.DESCRIPTION)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.max_steps is None or trainer.max_steps <= 0:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and not bar.disable and self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        """loss and tok/s, by short names (the rest of Lightning's list, v_num included, stays in the logs)."""
        metrics = super().get_metrics(trainer, pl_module)
        out: dict[str, Any] = {}
        for name, label in SHOWN.items():
            if name in metrics:
                value = float(metrics[name])
                out[label] = f"{value:,.0f}" if label == "tok/s" else f"{value:.3f}"
        return out
