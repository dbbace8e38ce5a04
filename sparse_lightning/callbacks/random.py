"""Gradual random pruning: the magnitude-pruning schedule with uniformly random choices, the
baseline every method must beat (Gale et al. 2019, section 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sparse_lightning.callbacks.magnitude import GradualPruning
from sparse_lightning.errors import ConfigError


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

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int,
        end_step: int,
        frequency: int,
        seed: int = 0,
        scope: str = "layer",
        initial_sparsity: float = 0.0,
        power: int = 3,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        first_layer_dense: bool = False,
        last_layer_dense: bool = False,
        layer_sparsity: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            target_sparsity,
            begin_step,
            end_step,
            frequency,
            scope,
            initial_sparsity,
            power,
            include,
            exclude,
            first_layer_dense,
            last_layer_dense,
            layer_sparsity,
        )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed={seed!r} is not allowed; it must be an integer >= 0")
        self.seed = seed

    def scores(self, weights: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """U(0, 1) per entry, drawn on the CPU (identical on every device) for this update step."""
        generator = update_generator(self.seed, step)
        return [torch.rand(w.shape, generator=generator).to(w.device) for w in weights]
