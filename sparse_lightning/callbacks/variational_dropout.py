"""Sparse variational dropout (Molchanov et al. 2017) as a callback, and the base it shares with
l0: methods whose sparsity is the outcome of a ramped regulariser on reparameterised layers."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lightning.budgets import LayerBudget, UniformBudget
from sparse_lightning.callbacks.base import SparsityCallback, checked_seed, reset_optimizer_state
from sparse_lightning.control import CONTROLS, SparsityController
from sparse_lightning.errors import ConfigError
from sparse_lightning.layers import backends
from sparse_lightning.layers import variational_dropout as vd_math
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.layers.reparameterise import VD_CLASSES, reparameterise
from sparse_lightning.pruning import alive_scores, keep_top, n_to_keep
from sparse_lightning.schedules import RegulariserRamp
from sparse_lightning.selection import LayerSelection

log = logging.getLogger(__name__)


def shares(total: int, pool: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``pool`` (largest remainders; never above a pool)."""
    whole = sum(pool)
    if total == 0 or whole == 0:
        return [0] * len(pool)
    quotas = [total * p / whole for p in pool]
    parts = [int(q) for q in quotas]
    by_remainder = sorted(range(len(pool)), key=lambda i: parts[i] - quotas[i])
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _finite_number(name: str, value: Any, minimum: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        allowed = f"a finite number >= {minimum:g}" if minimum is not None else "a finite number"
        raise ConfigError(f"{name}={value} is not allowed; it must be {allowed}")
    return number


class RegularisedSparsity(SparsityCallback):
    """Base of VD and l0: swaps the selected layers for reparameterised ones in ``setup`` (before
    the optimiser is built and a checkpoint restored), registers ``weight(t) * regulariser`` as a
    loss term with the weight ramped on ``trainer.global_step``, and at the end of training turns
    the evaluation rule into masks on plain weights (pruned entries zero), so ``mask_set``,
    masks.pt, results.json and checkpoints read the same as for magnitude pruning.

    ``describe()`` gives the regulariser weight and the log_sigma2 / log_alpha ranges for the
    message with which a non-finite loss stops the run (train.py's ``FiniteLossGuard``).
    """

    layer_classes: Mapping[type[nn.Module], type[nn.Module]] = {}
    loss_name = "regulariser"
    weight_name = "weight"

    def __init__(
        self,
        weight: float,
        ramp: RegulariserRamp,
        grad_scale: float = 1.0,
        target_sparsity: float = 0.0,
        selection: LayerSelection | None = None,
        budget: LayerBudget | None = None,
        seed: int = 0,
        backend: str = "auto",
        control: str = "fixed",
        controller: SparsityController | None = None,
    ) -> None:
        if control not in CONTROLS:
            raise ConfigError(f"control='{control}' is not one of {', '.join(CONTROLS)}")
        if control == "target" and controller is None:
            raise ConfigError("control='target' needs a controller (method.controller)")
        if budget is not None and not isinstance(budget, UniformBudget):
            raise ConfigError(
                f"budget={budget.name} does not apply to {self.method_name}: its sparsity is the "
                f"outcome of its regulariser (use budget=uniform)"
            )
        if budget is not None and budget.layer_sparsity:
            raise ConfigError(
                f"{self.method_name} takes no layer_sparsity: its per-layer sparsity is the "
                f"outcome of its regulariser"
            )
        super().__init__(target_sparsity, selection, budget)
        self.seed = checked_seed(seed)
        self.grad_scale = _finite_number("grad_scale", grad_scale, minimum=0.0)
        self.reg_weight = _finite_number(self.weight_name, weight, minimum=0.0)
        self.ramp = ramp
        if backend not in backends.BACKENDS:
            raise ConfigError(f"backend='{backend}' is not one of {', '.join(backends.BACKENDS)}")
        self.backend = backend
        self.control = control
        self.controller = controller if control == "target" else None
        if self.controller is not None and self.controller.target_sparsity != self.target_sparsity:
            raise ConfigError(
                f"the controller's final sparsity {self.controller.target_sparsity} differs from "
                f"target_sparsity={self.target_sparsity}"
            )
        self.settled = False  # control=target: masks fixed at the schedule's end (settle)
        self.layers: list[nn.Module] = []
        self._trainer: pl.Trainer | None = None
        self.noise: NoiseSource | None = None
        self._saved_noise: dict[str, Any] | None = None

    # -- what subclasses give ----------------------------------------------------------------
    def layer_init(self) -> dict[str, Any]:
        """Keyword arguments of the layers' ``reparameterise_``."""
        return {"grad_scale": self.grad_scale}

    def describe_state(self) -> str:
        """The reparameterisation's ranges, for the divergence message."""
        raise NotImplementedError

    # -- schedule ----------------------------------------------------------------------------
    def check_budget(self, max_steps: int) -> None:
        if max_steps is not None and 0 < max_steps < self.ramp.end_step:
            raise ConfigError(
                f"end_step={self.ramp.end_step} is after the last training step "
                f"(trainer.max_steps={max_steps}); the {self.weight_name} would never be reached"
            )

    def current_weight(self, step: int) -> float:
        """The regulariser's weight after ``step`` optimiser steps: its final weight, ramped
        (``control=fixed``), or the controller's multiplier (``control=target``, a host sync)."""
        if self.settled:
            return 0.0
        if self.controller is not None and self.controller.log_weight is not None:
            return float(self.controller.weight())
        return self.reg_weight * self.ramp.fraction_at(step)

    def scheduled_sparsity(self, step: int) -> float:
        if self.controller is not None:
            return self.controller.schedule.sparsity_at(step)
        return self.target_sparsity

    def progress(self, step: int) -> dict[str, float]:
        return {**super().progress(step), "sparsity/reg_weight": self.current_weight(step)}

    def record(self) -> dict[str, Any]:
        """The backend that computed the passes (its random numbers differ from the other's) and
        how the regulariser weight was set."""
        return {**super().record(), "backend": backends.active(), "control": self.control}

    def loss(self) -> torch.Tensor:
        """weight(t) * sum of the layers' regularisers (computed by their training forward)."""
        terms = [layer.regulariser() for layer in self.layers]
        if self.settled:
            return terms[0].new_zeros(())
        if self.controller is not None:
            return self.controller.weight() * torch.stack(terms).sum()
        step = self._trainer.global_step if self._trainer is not None else 0
        weight = self.current_weight(step)
        if weight == 0.0:
            return terms[0].new_zeros(())
        return weight * torch.stack(terms).sum()

    # -- Lightning hooks ---------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Reparameterise each selected weight at every module that uses it (a tied embedding:
        its lookups and the output layer, one log_sigma2 / log_alpha, counted once by the layer
        in ``self.layers``); sharing the layers cannot handle is a ConfigError here, before the
        optimiser is built."""
        super().setup(trainer, pl_module, stage)
        assert self.mask_set is not None
        self._trainer = trainer
        backends.use_backend(self.backend)
        init = self.layer_init()
        self.layers = [
            reparameterise(pl_module.model, name, self.layer_classes, **init)
            for name in self.mask_set.names
        ]
        pl_module.add_loss_term(self.loss_name, self.loss)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Masks stay full during training (the evaluation rule becomes masks at the end), so the
        per-step masking hook is registered only when training continues a finalised run."""
        assert self.mask_set is not None
        self.mask_set.refresh()
        if self.mask_set.sparsity() > 0.0:
            super().on_train_start(trainer, pl_module)
        if self.settled:  # resumed after settling: the extra Parameters stay frozen
            for layer in self.layers:
                layer.freeze_()
        self._start_noise(trainer.global_rank, self.layers[0].weight.device)
        if self.controller is not None:
            num_weights = sum(layer.weight.numel() for layer in self.layers)
            self.controller.start(num_weights, self.layers[0].weight.device)

    def _start_noise(self, rank: int, device: torch.device) -> None:
        """This rank's noise streams (seeded by (seed, rank), so ranks draw independently),
        continued from the checkpoint when resuming on the same rank and kind of device."""
        self.noise = NoiseSource(self.seed, rank, device)
        if self._saved_noise is not None and not self.noise.load_state_dict(self._saved_noise):
            log.warning(
                "the checkpoint's %s noise streams belong to another rank, seed or device; "
                "rank %d starts fresh streams",
                self.method_name,
                rank,
            )
        for layer in self.layers:
            layer.noise_source = self.noise  # and on the layers tied to it

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        """While the controller steers: the regularised layers' gradient clipped to
        ``controller.max_grad_norm`` (see control.py; no host sync)."""
        if self.controller is None or self.settled or self.controller.max_grad_norm is None:
            return
        params = [p for layer in self.layers for p in (layer.weight, self._extra(layer))]
        torch.nn.utils.clip_grad_norm_(params, self.controller.max_grad_norm, foreach=True)

    @staticmethod
    def _extra(layer: nn.Module) -> nn.Parameter:
        """The Parameter a reparameterised layer adds (log_sigma2, log_alpha)."""
        return getattr(layer, layer.extra_name)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        step = trainer.global_step
        if self.controller is not None and not self.settled:
            if step >= self.controller.schedule.end_step:
                self.settle(trainer)
            elif self.controller.due(step):
                self.controller.update(step, self._evaluation_sparsity())
        if 0 < trainer.max_steps <= trainer.global_step:
            self.finalise()  # before this step's checkpoint is written

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finalise()
        super().on_train_end(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Logs ``val/sparsity``: the fraction of weights the evaluation rule prunes now."""
        pl_module.log("val/sparsity", self._evaluation_sparsity())

    def current_sparsity(self) -> float:
        """The fraction of weights the evaluation rule prunes now (the masks stay full until
        ``finalise``), as one reduction and one host sync."""
        return float(self._evaluation_sparsity())

    @torch.no_grad()
    def _evaluation_sparsity(self) -> torch.Tensor:
        kept = torch.stack([layer.eval_keep().sum() for layer in self.layers]).sum()
        total = sum(layer.weight.numel() for layer in self.layers)
        return 1.0 - kept.float() / total

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The noise streams' states, so a resumed run draws what an uninterrupted one would."""
        state = {"noise": self.noise.state_dict()} if self.noise is not None else {}
        if self.controller is not None:
            state["controller"] = self.controller.state_dict()
            state["settled"] = self.settled
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_noise = state_dict.get("noise")
        if self.controller is not None and "controller" in state_dict:
            self.controller.load_state_dict(state_dict["controller"])
            self.settled = bool(state_dict.get("settled", False))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["noise"] = None  # generators are process-local; re-made at train start
        return state

    # -- outcome -----------------------------------------------------------------------------
    def describe(self) -> str:
        """For the non-finite-loss message (train.py's FiniteLossGuard): weight and ranges."""
        if not self.layers:
            return self.method_name
        step = self._trainer.global_step if self._trainer is not None else 0
        return (
            f"{self.method_name} with {self.weight_name} {self.current_weight(step):.3g}, "
            f"{self.describe_state()}"
        )

    @torch.no_grad()
    def finalise(self) -> None:
        """Masks := the evaluation rule; pruned weights zeroed (and l0 gates folded). Under
        ``control=target`` the masks settled at the schedule's end (or, if the run ended before
        it, ``settled_keep`` now), with the rule moved to agree. Idempotent."""
        assert self.mask_set is not None
        if self.settled:
            self._fold([e.mask.clone() for e in self.mask_set.entries])
        elif self.controller is not None and self.mask_set.sparsity() == 0.0:
            self._fold(self.settled_keep())
        else:  # control=fixed, or finalised already
            self._fold([None] * len(self.layers))

    def _fold(self, keep: Sequence[torch.Tensor | None]) -> None:
        """Each layer folded to ``keep`` (None: its evaluation rule); the masks become that."""
        assert self.mask_set is not None
        names, layers = self.mask_set.names, self.layers
        self.mask_set.set_masks({n: layer.fold_(k) for n, layer, k in zip(names, layers, keep)})

    @torch.no_grad()
    def settle(self, trainer: pl.Trainer) -> None:
        """``control=target`` at the schedule's end step: the target met exactly
        (``settled_keep``), the masks fixed from here on (zeroed after every step), the
        regulariser's weight 0 and its Parameters (log_sigma2, log_alpha) frozen, their optimiser
        state zeroed, so the rest of training fine-tunes the remaining weights, as magnitude
        pruning does after its last update."""
        self._fold(self.settled_keep())
        extras = [self._extra(layer) for layer in self.layers]
        for layer in self.layers:
            layer.freeze_()
        reset_optimizer_state(
            trainer.optimizers, [(p, torch.ones_like(p, dtype=torch.bool)) for p in extras]
        )
        self.settled = True
        if not self._hook_handles:
            for optimizer in trainer.optimizers:
                self._hook_handles.append(optimizer.register_step_post_hook(self._after_step))

    @torch.no_grad()
    def settled_keep(self) -> list[torch.Tensor]:
        """The rule's keep masks, adjusted to exactly round((1 - s) N) kept weights: the
        difference is shared among the layers in proportion to what each can give (its kept
        weights when pruning more, its pruned ones when regrowing; largest remainders), and
        within a layer settled by its ``prune_score`` (lowest pruned first) or ``regrow_score``
        (highest regrown first), so the rule's distribution over layers stays."""
        rule = [layer.eval_keep() for layer in self.layers]
        kept = torch.stack([r.sum() for r in rule]).tolist()  # one host sync
        sizes = [r.numel() for r in rule]
        extra = sum(kept) - n_to_keep(sum(sizes), self.target_sparsity)
        pool = kept if extra > 0 else [n - k for n, k in zip(sizes, kept)]
        settled = []
        for layer, keep, k, share in zip(self.layers, rule, kept, shares(abs(extra), pool)):
            if share and extra > 0:
                keep = keep_top(alive_scores(layer.prune_score(), keep), k - share)
            elif share:
                keep = keep | keep_top(alive_scores(layer.regrow_score(), ~keep), share)
            settled.append(keep)
        return settled

    def _range(self, attr: str) -> str:
        """Range of the finite entries of ``attr`` over all layers, and how many are not finite."""
        values = torch.cat([getattr(layer, attr).detach().reshape(-1) for layer in self.layers])
        finite = torch.isfinite(values)
        bad = int((~finite).sum())
        kept = values[finite]
        text = (
            f"{attr} in [{float(kept.min()):.3g}, {float(kept.max()):.3g}]"
            if kept.numel()
            else attr
        )
        return text + (f" ({bad} not finite)" if bad else "")


class VariationalDropout(RegularisedSparsity):
    """Sparse variational dropout: loss = task + kl_weight(t) * sum KL; pruned where log_alpha >=
    threshold. Sparsity is the outcome of ``kl_weight`` and ``threshold``."""

    method_name = "variational_dropout"
    layer_classes = VD_CLASSES
    loss_name = "kl"
    weight_name = "kl_weight"

    def __init__(
        self,
        kl_weight: float,
        ramp: RegulariserRamp,
        threshold: float = vd_math.THRESHOLD,
        log_sigma2_init: float = vd_math.LOG_SIGMA2_INIT,
        **common: Any,
    ) -> None:
        """``common``: ``RegularisedSparsity``'s arguments after ``ramp``."""
        super().__init__(kl_weight, ramp, **common)
        self.threshold = _finite_number("threshold", threshold)
        self.log_sigma2_init = _finite_number("log_sigma2_init", log_sigma2_init)

    def layer_init(self) -> dict[str, Any]:
        init = super().layer_init()
        return {**init, "log_sigma2_init": self.log_sigma2_init, "threshold": self.threshold}

    def describe_state(self) -> str:
        return f"{self._range('log_sigma2')}, {self._range('weight')}"
