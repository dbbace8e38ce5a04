"""Gradual random pruning: the magnitude-pruning schedule with uniformly random choices, the
baseline every method must beat (Gale et al. 2019, section 3)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sparse_lightning.budgets import LayerBudget
from sparse_lightning.callbacks.base import checked_seed
from sparse_lightning.callbacks.gradual import GradualPruning
from sparse_lightning.schedules import PolynomialSchedule
from sparse_lightning.selection import LayerSelection


def update_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (run seed, update step) by NumPy's SeedSequence hash: every
    rerun, resume and DDP rank draws the same numbers with no generator state to carry."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state))


class RandomScore:
    """U(0, 1) per entry, drawn on the CPU (identical on every device) for the update step:
    the pruned entries are uniformly random among the live ones."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = checked_seed(seed)

    def __call__(self, weights: Sequence[torch.Tensor], step: int) -> list[torch.Tensor]:
        generator = update_generator(self.seed, step)
        return [torch.rand(w.shape, generator=generator).to(w.device) for w in weights]


class RandomPruning(GradualPruning):
    """Gradual pruning with random scores: magnitude pruning's schedule, selection and budget."""

    def __init__(
        self,
        schedule: PolynomialSchedule,
        seed: int = 0,
        selection: LayerSelection | None = None,
        budget: LayerBudget | None = None,
        scope: str = "layer",
    ) -> None:
        super().__init__(RandomScore(seed), schedule, selection, budget, scope)
