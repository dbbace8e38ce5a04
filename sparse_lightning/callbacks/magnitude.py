"""Gradual magnitude pruning (Zhu & Gupta 2017), as used by Gale et al. (2019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import pytorch_lightning as pl
import torch

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.errors import ConfigError
from sparse_lightning.pruning import global_masks, layerwise_masks
from sparse_lightning.schedules import PolynomialSchedule

SCOPES = ("layer", "global")


class GradualPruning(SparsityCallback):
    """Masks the lowest-scoring live weights on the cubic schedule; subclasses give the score.

    After optimiser step t (``trainer.global_step``), when the schedule says so, each weight
    tensor is pruned to s_t scaled to its own target (``scope=layer``) or all tensors are ranked
    together (``scope=global``; tensors a ``layer_sparsity`` pattern names keep their own).
    """

    def __init__(
        self,
        target_sparsity: float,
        begin_step: int,
        end_step: int,
        frequency: int,
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
            target_sparsity, include, exclude, first_layer_dense, last_layer_dense, layer_sparsity
        )
        if scope not in SCOPES:
            raise ConfigError(f"scope='{scope}' is not one of {', '.join(SCOPES)}")
        self.scope = scope
        self.schedule = PolynomialSchedule(
            final_sparsity=self.target_sparsity,
            begin_step=int(begin_step),
            end_step=int(end_step),
            frequency=int(frequency),
            initial_sparsity=float(initial_sparsity),
            power=int(power),
        )
        self.last_update_step = -1

    def check_budget(self, max_steps: int) -> None:
        if max_steps is not None and 0 < max_steps < self.schedule.end_step:
            raise ConfigError(
                f"end_step={self.schedule.end_step} is after the last training step "
                f"(trainer.max_steps={max_steps}); the target sparsity would never be reached"
            )

    def scores(self, weights: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """Importance of each entry at update ``step``; the lowest live ones are pruned first.
        Return new tensors: the ranking overwrites pruned entries in place."""
        raise NotImplementedError

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
        weights = [e.weight.detach() for e in entries]
        masks = [e.mask for e in entries]
        scores = self.scores(weights, step)
        if self.scope == "layer":
            new = layerwise_masks(scores, masks, targets)
        else:
            new = list(masks)
            overridden = self._overridden()
            own = [i for i, e in enumerate(entries) if e.name in overridden]
            pooled = [i for i, e in enumerate(entries) if e.name not in overridden]
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

    def _overridden(self) -> set[str]:
        """Tensors a ``layer_sparsity`` pattern names: they keep their own target under
        ``scope=global``, even one equal to the global target."""
        patterns = list(self.layer_sparsity_overrides)
        return {n for n in self.layer_targets if any(fnmatchcase(n, p) for p in patterns)}

    def state_dict(self) -> dict[str, Any]:
        return {"last_update_step": self.last_update_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_update_step = int(state_dict.get("last_update_step", -1))


class MagnitudePruning(GradualPruning):
    """Gradual magnitude pruning: the smallest |w| go first."""

    method_name = "magnitude"

    def scores(self, weights: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        return [w.abs() for w in weights]
