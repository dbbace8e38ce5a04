"""What every task module shares: the wrapped model, optimiser factories, registered loss terms."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.layers.reparameterise import optimizer_groups
from sparse_lightning.masks import add_missing_mask_buffers
from sparse_lightning.run.folder import model_state

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
LossTerm = Callable[[], torch.Tensor]
WEIGHT_DECAY_ON = ("all", "kernels")


def kernels_only_decay(module: nn.Module, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``groups`` with weight decay kept only on conv and linear kernels: every other parameter
    of a decayed group (norm scales and shifts, biases, embeddings) moves to a group with
    ``weight_decay`` 0. The reference ResNet-50 (``sparse_rn50/resnet_model.py``) puts its L2
    regulariser on conv and fully connected kernels only."""
    kernels = {
        id(m.weight)
        for m in module.modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
        and isinstance(getattr(m, "weight", None), nn.Parameter)
    }
    split: list[dict[str, Any]] = []
    for group in groups:
        if group.get("weight_decay", None) == 0.0:
            split.append(group)
            continue
        decayed = [p for p in group["params"] if id(p) in kernels]
        undecayed = [p for p in group["params"] if id(p) not in kernels]
        split.append({**group, "params": decayed})
        if undecayed:
            split.append({**group, "params": undecayed, "weight_decay": 0.0})
    return split


class SparseTaskModule(pl.LightningModule):
    """Wraps ``model`` (any ``nn.Module``) and adds the regulariser terms callbacks register.

    A Lightning callback cannot change the loss, so methods such as variational dropout call
    ``add_loss_term(name, fn)``; ``fn()`` is evaluated each training step and summed into the
    loss; each term is logged as ``train/<name>`` and their sum as ``train/reg_loss``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_interval: str = "step",
        weight_decay_on: str = "all",
    ) -> None:
        super().__init__()
        if weight_decay_on not in WEIGHT_DECAY_ON:
            raise ConfigError(
                f"task.weight_decay_on={weight_decay_on!r} is not one of "
                f"{', '.join(WEIGHT_DECAY_ON)}"
            )
        self.weight_decay_on = weight_decay_on
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
        """Task loss plus every registered term; logs each term as ``train/<name>``, their sum
        as ``train/reg_loss``, the task loss and the total."""
        loss = task_loss
        if self.loss_terms:
            terms = {name: term() for name, term in self.loss_terms.items()}
            for name, value in terms.items():
                self.log(f"train/{name}", value)
            reg = sum(terms.values())
            self.log("train/reg_loss", reg)
            loss = task_loss + reg
        self.log("train/task_loss", task_loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        groups = optimizer_groups(self)  # VD/l0 params: no decay
        if self.weight_decay_on == "kernels":
            groups = kernels_only_decay(self, groups)
        optimizer = self.optimizer_factory(groups)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_scheduler_interval},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A fresh module (no callback attached yet) still takes a checkpoint with masks."""
        add_missing_mask_buffers(self.model, model_state(checkpoint["state_dict"]))
