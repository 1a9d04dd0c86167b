"""Lightning's ModelCheckpoint, except that ``last.ckpt`` always holds the final step of a finished fit.

Lightning 2.6 writes ``last.ckpt`` at the end of training only if no ``last`` was written before, so with
``every_n_train_steps: 250`` a 400-step run ended with ``last.ckpt`` at step 250: the last 150 steps were
trained, logged and then lost, and anything that loaded ``last.ckpt`` (specialists, experiments) silently
used the older model. This class saves the final step whenever it is not already on disk. The configs use
it as ``class_path: soe.train.callbacks.ModelCheckpoint`` with Lightning's own arguments.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint


class ModelCheckpoint(_LightningModelCheckpoint):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # _should_skip_saving_checkpoint is True when this step is already saved (or in fast_dev_run /
        # sanity checks); every rank calls this, as the distributed checkpoint save requires.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
