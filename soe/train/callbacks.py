"""Lightning's ModelCheckpoint, except that ``last.ckpt`` always holds the final step of a finished fit.

Lightning 2.6 writes ``last.ckpt`` at the end of training only if no ``last`` was written before, so with
``every_n_train_steps: 250`` a 400-step run ended with ``last.ckpt`` at step 250: the last 150 steps were
trained, logged and then lost, and anything that loaded ``last.ckpt`` (specialists, experiments) silently
used the older model. This class saves the final step whenever it is not already on disk. The configs use
it as ``class_path: soe.train.callbacks.ModelCheckpoint`` with Lightning's own arguments.

Each checkpoint is also written beside its name (``.<name>.partial``) and renamed over it: Lightning's own
"atomic" save writes in the system temp directory and, when that is another file system (a tmpfs /tmp),
*copies* the file into place, so a training killed during the copy left a truncated ``last.ckpt`` that looked
finished (tests/test_fault_injection.py).
"""

from __future__ import annotations

import os
import shutil
from weakref import proxy

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint


class ModelCheckpoint(_LightningModelCheckpoint):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # _should_skip_saving_checkpoint is True when this step is already saved (or in fast_dev_run /
        # sanity checks); every rank calls this, as the distributed checkpoint save requires.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if "://" in str(filepath):  # remote storage: Lightning's own transaction
            return super()._save_checkpoint(trainer, filepath)
        head, name = os.path.split(str(filepath))
        partial = os.path.join(head, f".{name}.partial")  # the same on every rank (a sharded save is a directory)
        trainer.save_checkpoint(partial, self.save_weights_only)
        if trainer.is_global_zero and os.path.lexists(partial):
            if os.path.isdir(partial) and os.path.isdir(filepath):
                shutil.rmtree(filepath)
            os.replace(partial, filepath)
        trainer.strategy.barrier("soe.ModelCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:  # as Lightning's _save_checkpoint
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
