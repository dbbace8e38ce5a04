"""Sparse training from scratch: masks at the layer budget from step 0, fixed (``static``) or
updated by drop-and-grow (SET, Mocanu et al. 2018; RigL, Evci et al. 2020).

At each update of ``schedule`` (``DropFractionSchedule``) every weight tensor with k live entries
drops the floor(f(t) k) live ones of smallest |w| and grows as many among the rest (the ones
just dropped included), chosen by ``grow``: uniformly at random (SET) or where the dense
gradient of the step just taken is largest in magnitude (RigL). A grown weight that was not live
starts at zero and its optimiser state (momentum, Adam moments) is reset to zero, as RigL's
``_get_update_op`` and ``reset_momentum`` do. Each tensor keeps exactly its budget's count, so
per-layer sparsity never changes. The gradient is already dense: masks zero the weights in place
and the forward pass uses the whole tensor, so RigL reads ``.grad`` on update steps and does no
extra work on the others. Random choices depend only on (seed, step): every rerun, resume and
DDP rank draws the same masks.

With an N:M ``pattern`` (``patterns.py``; the target must be 1 - N/M) the starting mask keeps N
random entries of every group of M (the highest of the same (seed, 0) draws), and each update
drops as above (the floor(f(t) k) smallest |w| live entries of the tensor), then regrows in every
group exactly as many as it lost, by the same grow score, among its entries not kept
(``pruning.nm_regrow``): every group holds exactly N after every update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pytorch_lightning as pl
import torch

from sparse_lightning.budgets import LayerBudget
from sparse_lightning.callbacks.base import SparsityCallback, checked_seed, reset_optimizer_state
from sparse_lightning.callbacks.random import RandomScore, update_generator
from sparse_lightning.errors import ConfigError
from sparse_lightning.patterns import check_selected, checked_pattern
from sparse_lightning.pruning import alive_scores, keep_top, n_to_keep, nm_regrow, top_n_per_group
from sparse_lightning.schedules import DropFractionSchedule
from sparse_lightning.selection import LayerSelection

INITIAL_MASK_STEP = 0  # the (seed, step) of the random masks at the start


class GrowScore(Protocol):
    """Where to grow: the highest-scoring entries among those not kept after the drop."""

    name: str

    def __call__(self, weights: Sequence[torch.Tensor], step: int) -> list[torch.Tensor]: ...


class RandomGrowth(RandomScore):
    """SET: random scores from (seed, step), as random pruning draws them."""

    name = "set"


class GradientGrowth:
    """RigL: |dL/dw| of the step just taken (dense: masked entries get their gradient too)."""

    name = "rigl"

    def __call__(self, weights: Sequence[torch.Tensor], step: int) -> list[torch.Tensor]:
        missing = [i for i, w in enumerate(weights) if w.grad is None]
        if missing:
            raise RuntimeError(
                "RigL needs the gradient of every masked weight at its update steps; "
                f"{len(missing)} have none (frozen, or unused by the forward pass)"
            )
        return [w.grad.detach().abs() for w in weights]


class SparseTraining(SparsityCallback):
    """Static sparse training (``grow`` None) or drop-and-grow (``grow`` and ``schedule``);
    ``pattern`` ("N:M") keeps N of every M consecutive input weights throughout."""

    def __init__(
        self,
        target_sparsity: float,
        seed: int = 0,
        grow: GrowScore | None = None,
        schedule: DropFractionSchedule | None = None,
        selection: LayerSelection | None = None,
        budget: LayerBudget | None = None,
        pattern: str | None = None,
    ) -> None:
        super().__init__(target_sparsity, selection, budget)
        if (grow is None) != (schedule is None):
            raise ConfigError("drop-and-grow needs both a grow rule and a schedule (or neither)")
        self.pattern = checked_pattern(pattern, self.target_sparsity, self.budget)
        self.seed = checked_seed(seed)
        self.grow = grow
        self.schedule = schedule
        self.method_name = grow.name if grow is not None else "static"
        self.last_update_step = -1

    def attach(self, model: torch.nn.Module):
        """Masks at the budget from the start: each tensor keeps exactly its count (under a
        pattern: N of every group, whose input dimension must divide by M), drawn uniformly at
        random from (seed, 0), before the first forward pass."""
        fresh = self.mask_set is None
        if fresh and self.pattern is not None:
            check_selected(model, self.selection.select(model), self.pattern)
        mask_set = super().attach(model)
        if fresh:
            generator = update_generator(self.seed, INITIAL_MASK_STEP)
            masks = {}
            for entry in mask_set.entries:
                scores = torch.rand(entry.mask.shape, generator=generator)
                if self.pattern is not None:
                    keep = top_n_per_group(scores, self.pattern.n, self.pattern.m)
                else:
                    count = n_to_keep(entry.mask.numel(), self.layer_targets[entry.name])
                    keep = keep_top(scores, count)
                masks[entry.name] = keep.to(entry.mask.device)
            mask_set.set_masks(masks)
        return mask_set

    def record(self) -> dict[str, Any]:
        """results.json's ``method_details``: the budget, and the pattern when one is set."""
        pattern = {} if self.pattern is None else {"pattern": str(self.pattern)}
        return {**super().record(), **pattern}

    def changes_at(self, step: int) -> bool:
        return self.schedule is not None and self.schedule.is_update_step(step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if self.changes_at(step) and step != self.last_update_step:
            self.update_masks(step, trainer.optimizers)
            self.last_update_step = step

    @torch.no_grad()
    def update_masks(self, step: int, optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        """Drop and grow in every tensor (see the module docstring)."""
        assert self.mask_set is not None and self.schedule is not None and self.grow is not None
        entries = self.mask_set.entries
        fraction = self.schedule.fraction_at(step)
        weights = [e.weight for e in entries]
        grow_scores = self.grow(weights, step)
        new_masks, grown = {}, []
        for entry, weight, grow_score in zip(entries, weights, grow_scores):
            live = n_to_keep(entry.mask.numel(), self.layer_targets[entry.name])
            n_update = int(live * fraction)  # RigL: floor(n_ones * drop_fraction)
            kept = keep_top(alive_scores(weight.detach().abs(), entry.mask), live - n_update)
            if self.pattern is not None:
                added = nm_regrow(grow_score, kept, self.pattern.n, self.pattern.m)
            else:
                added = keep_top(alive_scores(grow_score.clone(), ~kept), n_update)
            new_masks[entry.name] = kept | added
            new = added & ~entry.mask
            weight[new] = 0.0
            grown.append((weight, new))
        reset_optimizer_state(optimizers, grown)
        self.mask_set.set_masks(new_masks)

    def state_dict(self) -> dict[str, Any]:
        return {"last_update_step": self.last_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_update_step = int(state_dict.get("last_update_step", -1))
