"""Saves the weights after optimiser step k as ``rewind.pt``, for lottery tickets with rewinding.

Frankle et al. (2019, "Stabilizing the lottery ticket hypothesis"; open_lth's "rewinding"):
resetting a found mask's weights to their values early in training (step k > 0) rather than to
their initialisation finds tickets in deeper networks. The source run saves those values here; a
later ``init=lottery init.rewind_step=k`` run starts from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import strip_masks
from sparse_lightning.run.folder import REWIND_FILE, save_torch


class RewindCheckpoint(pl.Callback):
    """Writes ``{"step": k, "state_dict": ...}`` to ``run_dir/rewind.pt`` once, after step k.

    The state_dict is the wrapped model's (``pl_module.model``) without mask buffers, like
    ``init.pt``; weights already pruned by step k are zero in it.
    """

    def __init__(self, step: int, run_dir: str | Path) -> None:
        step = int(step)
        if step < 1:
            raise ConfigError(
                f"init.save_rewind_step={step} must be a step >= 1 (step 0 is init.pt)"
            )
        self.step = step
        self.path = Path(run_dir) / REWIND_FILE

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero and not self.path.exists():
            state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.model.state_dict().items()
            }
            save_torch(self.path, {"step": self.step, "state_dict": strip_masks(state)})
