"""Gradual magnitude pruning (Zhu & Gupta 2017): the smallest |w| go first."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparse_lightning.budgets import LayerBudget
from sparse_lightning.callbacks.gradual import GradualPruning
from sparse_lightning.schedules import PolynomialSchedule
from sparse_lightning.selection import LayerSelection


class MagnitudeScore:
    """|w|."""

    name = "magnitude"

    def __call__(self, weights: Sequence[torch.Tensor], step: int) -> list[torch.Tensor]:
        return [w.detach().abs() for w in weights]


class MagnitudePruning(GradualPruning):
    """Gradual pruning scored by |w|."""

    def __init__(
        self,
        schedule: PolynomialSchedule,
        selection: LayerSelection | None = None,
        budget: LayerBudget | None = None,
        scope: str = "layer",
    ) -> None:
        super().__init__(MagnitudeScore(), schedule, selection, budget, scope)
