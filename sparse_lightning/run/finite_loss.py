"""Stop a run whose loss or weights turned NaN or inf, naming the step, before a bad
checkpoint is saved."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


class NonFiniteLossError(RuntimeError):
    """The training loss stopped being finite."""


class FiniteLossGuard(pl.Callback):
    """Remembers the first step whose loss is not finite, without a host sync per step.

    The flag is a device tensor updated in place; it is read (one sync) only when a checkpoint
    is about to be written and at the end of training, so the last checkpoint on disk is always
    one taken before the loss went bad. ``describe`` gives the method's state for the message.
    """

    def __init__(self, describe: Any = None) -> None:
        self.describe = describe
        self._first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach()) & (self._first_bad_step < 0)
        self._first_bad_step.masked_fill_(bad_now, trainer.global_step)

    def check(self) -> None:
        if self._first_bad_step is None:
            return
        step = int(self._first_bad_step)
        if step >= 0:
            state = f"; {self.describe()}" if callable(self.describe) else ""
            raise NonFiniteLossError(
                f"the training loss became NaN or inf at step {step}{state}; "
                "the last checkpoint before it is kept"
            )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse to write a checkpoint after a bad loss, or whose weights already blew up."""
        self.check()
        finite = torch.stack([p.detach().isfinite().all() for p in pl_module.parameters()])
        if not bool(finite.all()):
            state = f"; {self.describe()}" if callable(self.describe) else ""
            raise NonFiniteLossError(
                f"the weights became NaN or inf by step {trainer.global_step}{state}; "
                "the last checkpoint before it is kept"
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check()
