"""What every task module shares: the wrapped model, optimiser factories, registered loss terms."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lightning.layers.reparameterise import optimizer_groups
from sparse_lightning.masks import add_missing_mask_buffers

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
LossTerm = Callable[[], torch.Tensor]


class SparseTaskModule(pl.LightningModule):
    """Wraps ``model`` (any ``nn.Module``) and adds the regulariser terms callbacks register.

    A Lightning callback cannot change the loss, so methods such as variational dropout call
    ``add_loss_term(name, fn)``; ``fn()`` is evaluated each training step and summed into the
    loss, and each term is logged as ``train/<name>``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_interval = lr_scheduler_interval
        self.loss_terms: dict[str, LossTerm] = {}

    def add_loss_term(self, name: str, term: LossTerm) -> None:
        self.loss_terms[name] = term

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def total_loss(self, task_loss: torch.Tensor) -> torch.Tensor:
        """Task loss plus every registered term; logs each part."""
        loss = task_loss
        if self.loss_terms:
            reg = sum(term() for term in self.loss_terms.values())
            self.log("train/reg_loss", reg)
            loss = task_loss + reg
        self.log("train/task_loss", task_loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(optimizer_groups(self))  # VD/l0 params: no decay
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A fresh module (no callback attached yet) still takes a checkpoint with masks."""
        prefix = "model."
        model_state = {
            k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
        }
        add_missing_mask_buffers(self.model, model_state)
