"""Image / sequence classification with cross-entropy and torchmetrics accuracy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from sparse_lightning.modules.base import OptimizerFactory, SchedulerFactory, SparseTaskModule


class ClassificationModule(SparseTaskModule):
    """Logs ``{stage}/loss`` and ``{stage}/acc`` (top-1, synced across ranks) for val and test.

    ``weight_decay_on="kernels"`` keeps the optimiser's weight decay on conv and linear kernels
    only (see ``kernels_only_decay``)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_interval: str = "step",
        label_smoothing: float = 0.0,
        top5: bool = False,
        weight_decay_on: str = "all",
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, lr_scheduler_interval, weight_decay_on)
        self.label_smoothing = label_smoothing
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        if top5:  # logged as {stage}/acc5
            self.val_acc5 = MulticlassAccuracy(num_classes=num_classes, top_k=5, average="micro")
            self.test_acc5 = MulticlassAccuracy(num_classes=num_classes, top_k=5, average="micro")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        task_loss = F.cross_entropy(self.model(x), y, label_smoothing=self.label_smoothing)
        return self.total_loss(task_loss)

    def _evaluate(self, batch: Any, stage: str, accuracy: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.model(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), sync_dist=True)
        accuracy(logits, y)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        if hasattr(self, f"{stage}_acc5"):
            getattr(self, f"{stage}_acc5")(logits, y)
            self.log(f"{stage}/acc5", getattr(self, f"{stage}_acc5"))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)
