"""Gradual pruning (Zhu & Gupta 2017), as Gale et al. (2019) run it: on the cubic schedule the
lowest-scoring live weights are masked; the score is the method (magnitude, random, SNIP...).

With an N:M ``pattern`` (``patterns.py``) the schedule runs as before to 1 - N/M, but the N
highest-scoring live weights of every group of M are never pruned (``pruning.nm_masks``): in
between no group falls below N, at the end step every group holds exactly N. Any score works
(magnitude: the N largest |w| of each group survive; random, SNIP: their own scores)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lightning.budgets import LayerBudget
from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import MaskSet
from sparse_lightning.patterns import check_selected, checked_pattern
from sparse_lightning.pruning import global_masks, layerwise_masks, nm_masks
from sparse_lightning.schedules import PolynomialSchedule
from sparse_lightning.selection import LayerSelection

SCOPES = ("layer", "global")


class Score(Protocol):
    """The importance of every entry of the prunable weights at an update step; the lowest live
    ones are pruned first. ``weights`` are the parameters themselves (a score may read
    ``.grad``, the gradient of the step just taken); return new tensors (the ranking overwrites
    pruned entries in place)."""

    name: str

    def __call__(self, weights: Sequence[torch.Tensor], step: int) -> list[torch.Tensor]: ...


class GradualPruning(SparsityCallback):
    """Masks the lowest-scoring live weights on ``schedule``; ``score`` names the method.

    After optimiser step t (``trainer.global_step``), when the schedule says so, each weight
    tensor is pruned to s_t scaled to its own target from ``budget`` (``scope=layer``), or the
    weights the budget leaves free are ranked together (``scope=global``; the others keep their
    own target). The target is the schedule's final sparsity. ``pattern`` ("N:M", e.g. "2:4")
    keeps N of every M consecutive input weights (module docstring); it needs the target 1 - N/M,
    the uniform budget and ``scope=layer``, and every selected tensor's input dimension a
    multiple of M (all checked before training, as ConfigErrors).
    """

    def __init__(
        self,
        score: Score,
        schedule: PolynomialSchedule,
        selection: LayerSelection | None = None,
        budget: LayerBudget | None = None,
        scope: str = "layer",
        pattern: str | None = None,
    ) -> None:
        super().__init__(schedule.final_sparsity, selection, budget)
        if scope not in SCOPES:
            raise ConfigError(f"scope='{scope}' is not one of {', '.join(SCOPES)}")
        self.pattern = checked_pattern(pattern, self.target_sparsity, self.budget, scope)
        self.score = score
        self.method_name = score.name
        self.schedule = schedule
        self.scope = scope
        self.last_update_step = -1

    def attach(self, model: nn.Module) -> MaskSet:
        """As every method; under a pattern every selected tensor's groups must divide first (a
        ConfigError naming the ones that do not, before any mask buffer exists)."""
        if self.mask_set is None and self.pattern is not None:
            check_selected(model, self.selection.select(model), self.pattern)
        return super().attach(model)

    def record(self) -> dict[str, Any]:
        """results.json's ``method_details``: the budget, and the pattern when one is set."""
        pattern = {} if self.pattern is None else {"pattern": str(self.pattern)}
        return {**super().record(), **pattern}

    def check_budget(self, max_steps: int) -> None:
        if max_steps is not None and 0 < max_steps < self.schedule.end_step:
            raise ConfigError(
                f"end_step={self.schedule.end_step} is after the last training step "
                f"(trainer.max_steps={max_steps}); the target sparsity would never be reached"
            )

    def scheduled_sparsity(self, step: int) -> float:
        return self.schedule.sparsity_at(step)

    def changes_at(self, step: int) -> bool:
        return self.schedule.is_update_step(step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if step != self.last_update_step and self.schedule.is_update_step(step):
            self.update_masks(step)
            self.last_update_step = step

    @torch.no_grad()
    def update_masks(self, step: int) -> None:
        """Prune every tensor to the sparsity the schedule gives for ``step``."""
        assert self.mask_set is not None
        entries = self.mask_set.entries
        fraction = self._fraction_of_targets(step)
        targets = [self.layer_targets[e.name] * fraction for e in entries]
        masks = [e.mask for e in entries]
        scores = self.score([e.weight for e in entries], step)
        if self.pattern is not None:
            new = nm_masks(scores, masks, targets, self.pattern.n, self.pattern.m)
        elif self.scope == "layer":
            new = layerwise_masks(scores, masks, targets)
        else:
            new = list(masks)
            pooled_names = set(self.budget.pooled(self.mask_set.names))
            own = [i for i, e in enumerate(entries) if e.name not in pooled_names]
            pooled = [i for i, e in enumerate(entries) if e.name in pooled_names]
            own_masks = layerwise_masks(
                [scores[i] for i in own], [masks[i] for i in own], [targets[i] for i in own]
            )
            pooled_masks = global_masks(
                [scores[i] for i in pooled],
                [masks[i] for i in pooled],
                self.target_sparsity * fraction,
            )
            for i, mask in zip(own + pooled, own_masks + pooled_masks):
                new[i] = mask
        self.mask_set.set_masks({e.name: m for e, m in zip(entries, new)})

    def _fraction_of_targets(self, step: int) -> float:
        """The share of each tensor's own target that ``step`` prunes: s_t / s_f, or the
        schedule's progress when s_f = 0 (then only ``layer_sparsity`` overrides prune)."""
        if self.target_sparsity > 0:
            return self.schedule.sparsity_at(step) / self.target_sparsity
        return self.schedule.progress_at(step)

    def state_dict(self) -> dict[str, Any]:
        return {"last_update_step": self.last_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_update_step = int(state_dict.get("last_update_step", -1))
