"""What every sparsity method shares: a layer selection and a layer budget (its parts), mask
buffers, masking after each step, and the interface the monitor reads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from sparse_lightning.budgets import LayerBudget, UniformBudget
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import MaskSet
from sparse_lightning.selection import LayerSelection

log = logging.getLogger(__name__)


def checked_seed(seed: Any) -> int:
    """The run seed, or a ConfigError naming the bad value and what is allowed."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not allowed; it must be an integer >= 0")
    return seed


def reset_optimizer_state(
    optimizers: Sequence[torch.optim.Optimizer],
    entries: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Zero the per-entry optimiser state (SGD momentum, Adam's moments) of each parameter
    where its bool tensor is True, for every (parameter, bool tensor) in ``entries``."""
    for optimizer in optimizers:
        for parameter, where in entries:
            for value in optimizer.state.get(parameter, {}).values():
                if torch.is_tensor(value) and value.shape == parameter.shape:
                    value[where] = 0


class SparsityCallback(pl.Callback):
    """Base of every method: chooses the prunable weights and keeps them masked.

    The wrapped model is ``pl_module.model``. Masks are created in ``setup`` (before the optimiser
    is built and before a checkpoint is restored into them) and applied by an optimiser
    step-post hook, so pruned weights are exactly zero in every forward pass, whatever momentum
    or weight decay does to them in between. Subclasses decide when and how masks change.
    """

    method_name = "dense"

    def __init__(
        self,
        target_sparsity: float = 0.0,
        selection: LayerSelection | None = None,
        budget: LayerBudget | None = None,
    ) -> None:
        target_sparsity = float(target_sparsity)
        if not 0.0 <= target_sparsity < 1.0:
            raise ConfigError(
                f"sparsity target {target_sparsity} is outside the allowed range [0, 1)"
            )
        self.target_sparsity = target_sparsity
        self.selection = selection or LayerSelection()
        self.budget = budget or UniformBudget()
        self.mask_set: MaskSet | None = None
        self.layer_targets: dict[str, float] = {}
        self._hook_handles: list[Any] = []

    # -- selection -------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> MaskSet:
        """Choose the prunable weights of ``model`` and give them mask buffers (idempotent)."""
        if self.mask_set is not None:
            return self.mask_set
        names = self.selection.select(model)
        params = dict(model.named_parameters())
        shapes = {n: tuple(params[n].shape) for n in names}
        self.layer_targets = self.budget.targets(shapes, self.target_sparsity)
        self.mask_set = MaskSet(model, names)
        self._log_selection(model, names)
        return self.mask_set

    @rank_zero_only
    def _log_selection(self, model: nn.Module, names: Sequence[str]) -> None:
        params = dict(model.named_parameters())
        lines = [
            f"  {n} {tuple(params[n].shape)} target {self.layer_targets[n]:.4f}" for n in names
        ]
        log.info("%s prunes %d weight tensors:\n%s", self.method_name, len(names), "\n".join(lines))

    def describe(self) -> str:
        """The method's state in a few words, for error messages."""
        if self.mask_set is None:
            return self.method_name
        return f"{self.method_name} at sparsity {self.mask_set.sparsity():.4f}"

    def record(self) -> dict[str, Any]:
        """What results.json records about the method that ran, beyond its name: the layer
        budget, and whatever else its numbers depend on (a method adds it to this)."""
        return {"budget": self.budget.name}

    def check_budget(self, max_steps: int) -> None:
        """Raise ConfigError if the schedule cannot finish within ``max_steps`` optimiser steps."""

    # -- what the monitor and the progress bar read -------------------------------------------
    def current_sparsity(self) -> float:
        """Fraction of the prunable weights the method prunes now (one host sync): the masks'
        pruned fraction; methods whose masks are set only at the end (VD, l0) override it with
        their evaluation rule. What the logs call ``sparsity/global``."""
        assert self.mask_set is not None
        return self.mask_set.sparsity()

    def scheduled_sparsity(self, step: int) -> float:
        """The sparsity the method aims at after ``step`` optimiser steps (``sparsity/target``):
        a schedule's s_t, else the fixed target."""
        return self.target_sparsity

    def changes_at(self, step: int) -> bool:
        """Whether the masks may change after ``step`` (the monitor logs such steps too)."""
        return False

    def progress(self, step: int) -> dict[str, float]:
        """The metrics a monitor logs after ``step`` (one host sync): ``sparsity/target``,
        ``sparsity/global`` and what a method adds (e.g. its regulariser weight)."""
        return {
            "sparsity/target": float(self.scheduled_sparsity(step)),
            "sparsity/global": self.current_sparsity(),
        }

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.attach(pl_module.model)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.mask_set is not None
        self.mask_set.refresh()  # the strategy may have moved the model since setup
        self.mask_set.apply_()
        for optimizer in trainer.optimizers:
            self._hook_handles.append(optimizer.register_step_post_hook(self._after_step))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        assert self.mask_set is not None
        self.mask_set.apply_()

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass

    def __getstate__(self) -> dict[str, Any]:
        # Hook handles are process-local; a copied callback re-registers them at train start.
        state = self.__dict__.copy()
        state["_hook_handles"] = []
        return state


class DenseBaseline(SparsityCallback):
    """No pruning: the same layer selection and accounting as every method, masks stay full."""

    method_name = "dense"

    def __init__(
        self, selection: LayerSelection | None = None, budget: LayerBudget | None = None
    ) -> None:
        """``budget`` is taken (so a ``budget=`` sweep may include dense) and has nothing to
        share out: every mask stays full."""
        super().__init__(0.0, selection)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No per-step work unless masks were given (``init.keep_mask``): then they hold."""
        if self.mask_set is not None and self.mask_set.sparsity() > 0:
            super().on_train_start(trainer, pl_module)
