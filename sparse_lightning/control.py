"""A regulariser weight that makes VD / l0 reach the sparsity asked for (``method.control=target``).

The weight lambda of the regulariser is the multiplier of the constraint "evaluation-rule sparsity
= s_t", s_t the cubic schedule of magnitude pruning (Zhu & Gupta 2017). Every ``every_n_steps``
optimiser steps the sparsity s the evaluation rule gives now is measured (one reduction) and
lambda takes one step of dual ascent in log space,

    log lambda <- log lambda + rate * (s_t - s),

so lambda grows while the rule prunes too little and shrinks while it prunes too much, whatever
the scale of the regulariser (multiplicative updates: Gallego-Posada et al. 2022, "Controlled
Sparsity via Constrained Optimization", do dual ascent on lambda for l0's expected density; the
same update drives VD's KL weight, whose sparsity also grows with it). lambda stays a tensor on
the weights' device, so neither the measurement nor the update syncs with the host. At the
schedule's end step the rest between the rule and the target is settled by ranking and the
masks are fixed for the remaining fine-tuning (``RegularisedSparsity.settle``).

High targets need a large lambda, and the regulariser's gradient on a small weight grows like
lambda / theta (VD: d log_alpha / d theta = -2 theta / (theta^2 + eps), up to 1 / sqrt(eps) =
1e4): under SGD one such step throws theta far past zero, its noise explodes and training
diverges (seen on a 3-layer MLP at 95 % and 98 %, at lambda ~ 2e-3). While the controller steers,
the gradient of the regularised layers' parameters can therefore be clipped to a global L2 norm
of ``max_grad_norm`` (``torch.nn.utils.clip_grad_norm_``, Pascanu et al. 2013), computed on the
device with no host sync; VD's config sets 1.0. l0's expected-L0 term has no gradient on theta,
and clipping its task gradient cost it 4 points of accuracy on cnn1d at 50 %, so l0 is not
clipped (``None``). The paper presets (fixed weights) are never clipped.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sparse_lightning.errors import ConfigError
from sparse_lightning.schedules import PolynomialSchedule

CONTROLS = ("target", "fixed")
LOG_WEIGHT_RANGE = (-60.0, 20.0)  # lambda in [1e-26, 5e8]: never 0, never overflowing


class SparsityController:
    """lambda(t) by dual ascent on the schedule's sparsity (see the module docstring)."""

    def __init__(
        self,
        schedule: PolynomialSchedule,
        every_n_steps: int = 10,
        rate: float = 2.0,
        initial_scale: float = 1.0e-3,
        max_grad_norm: float | None = None,
    ) -> None:
        if (
            isinstance(every_n_steps, bool)
            or int(every_n_steps) != every_n_steps
            or every_n_steps < 1
        ):
            raise ConfigError(f"every_n_steps={every_n_steps!r} must be a positive number of steps")
        if not math.isfinite(float(rate)) or float(rate) <= 0:
            raise ConfigError(f"rate={rate!r} must be a positive finite number")
        self.schedule = schedule
        self.every_n_steps = int(every_n_steps)
        self.rate = float(rate)
        if not math.isfinite(float(initial_scale)) or float(initial_scale) <= 0:
            raise ConfigError(f"initial_scale={initial_scale!r} must be a positive finite number")
        self.initial_scale = float(initial_scale)
        if max_grad_norm is not None and (
            not math.isfinite(float(max_grad_norm)) or float(max_grad_norm) <= 0
        ):
            raise ConfigError(
                f"max_grad_norm={max_grad_norm!r} must be a positive finite number or null (off)"
            )
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.log_weight: torch.Tensor | None = None
        self.last_step = -1

    @property
    def target_sparsity(self) -> float:
        return self.schedule.final_sparsity

    def start(self, num_weights: int, device: torch.device) -> None:
        """lambda := initial_scale / (number of regularised weights) on ``device``, unless a
        checkpoint gave it already: the regulariser is a sum over the weights, so at the start
        it weighs about ``initial_scale`` per unit of a per-weight term, on any model."""
        if self.log_weight is None:
            value = math.log(self.initial_scale / max(int(num_weights), 1))
            self.log_weight = torch.tensor(value, dtype=torch.float64, device=device)
        else:
            self.log_weight = self.log_weight.to(device)

    def weight(self) -> torch.Tensor:
        """lambda now, a 0-d float32 tensor on the weights' device."""
        assert self.log_weight is not None, "start() first"
        return self.log_weight.exp().float()

    def due(self, step: int) -> bool:
        return step != self.last_step and step % self.every_n_steps == 0

    @torch.no_grad()
    def update(self, step: int, sparsity: torch.Tensor) -> None:
        """One dual-ascent step after optimiser step ``step``, given the rule's ``sparsity`` (a
        0-d tensor on the weights' device)."""
        assert self.log_weight is not None, "start() first"
        error = self.schedule.sparsity_at(step) - sparsity.to(self.log_weight)
        self.log_weight.add_(self.rate * error).clamp_(*LOG_WEIGHT_RANGE)
        self.last_step = step

    def state_dict(self) -> dict[str, Any]:
        log_weight = None if self.log_weight is None else self.log_weight.detach().cpu()
        return {"log_weight": log_weight, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("log_weight") is not None:
            self.log_weight = state["log_weight"].clone()
        self.last_step = int(state.get("last_step", -1))
