"""Gradual random pruning: the magnitude-pruning schedule with uniformly random choices, the
baseline every method must beat (Gale et al. 2019, section 3)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparse_lightning.callbacks.base import checked_seed
from sparse_lightning.callbacks.magnitude import GradualPruning


def update_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from (run seed, update step) by NumPy's SeedSequence hash: every
    rerun, resume and DDP rank draws the same numbers with no generator state to carry."""
    state = np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state))


class RandomPruning(GradualPruning):
    """Same schedule, layer selection and per-layer targets as ``MagnitudePruning``; at each
    update the pruned entries are drawn uniformly at random among the live ones (random scores,
    lowest pruned)."""

    method_name = "random"

    def __init__(self, *args: Any, seed: int = 0, **kwargs: Any) -> None:
        """``seed`` (the run seed) plus every ``GradualPruning`` argument."""
        super().__init__(*args, **kwargs)
        self.seed = checked_seed(seed)

    def scores(self, weights: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """U(0, 1) per entry, drawn on the CPU (identical on every device) for this update step."""
        generator = update_generator(self.seed, step)
        return [torch.rand(w.shape, generator=generator).to(w.device) for w in weights]
