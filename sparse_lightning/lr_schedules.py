"""Learning-rate schedules of the paper's two tasks, as ``LambdaLR`` factories.

Use them from config with ``_partial_: true``; the task module calls the partial with the
optimiser and steps the scheduler after every optimiser step (``lr_scheduler_interval: step``).
``LambdaLR`` multiplies each parameter group's configured ``lr`` by the factor returned for the
number of optimiser steps taken so far.

``time_scale`` stretches a schedule in time: the factor at step t is the unstretched factor at
t / time_scale. scratch-b trains ``init.budget_factor`` times the source's steps on the source's
schedule stretched by that factor (the paper's scratch-b rows, ``rn50_scratch_lr_scaled.csv``),
so the presets set ``time_scale: ${oc.select:init.budget_factor,1.0}``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from sparse_lightning.errors import ConfigError


def warmup_step_factor(
    step: float,
    steps_per_epoch: int,
    warmup_epochs: float = 5.0,
    decay_epochs: Sequence[float] = (30, 60, 80),
    gamma: float = 0.1,
) -> float:
    """Goyal et al. (2017) ResNet-50 schedule, as used by Gale et al. (2019):

    factor(t) = (t + 1) / T_w                         for t < T_w  (linear warm-up)
              = gamma ** #{m in milestones : m <= t}  afterwards,

    with T_w = warmup_epochs * steps_per_epoch and milestones = decay_epochs * steps_per_epoch.
    """
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    milestones = [e * steps_per_epoch for e in decay_epochs]
    return gamma ** bisect.bisect_right(milestones, step)


def warmup_step_decay(
    optimizer: torch.optim.Optimizer,
    steps_per_epoch: int,
    warmup_epochs: float = 5.0,
    decay_epochs: Sequence[float] = (30, 60, 80),
    gamma: float = 0.1,
    time_scale: float = 1.0,
) -> LambdaLR:
    """Linear warm-up, then x ``gamma`` at each of ``decay_epochs`` (see ``warmup_step_factor``),
    stretched by ``time_scale``."""
    _check_time_scale(time_scale)
    if steps_per_epoch < 1:
        raise ConfigError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
    if warmup_epochs < 0:
        raise ConfigError(f"warmup_epochs={warmup_epochs} must be >= 0")
    if list(decay_epochs) != sorted(decay_epochs):
        raise ConfigError(f"decay_epochs={list(decay_epochs)} must be increasing")
    epochs = [float(e) for e in decay_epochs]
    return LambdaLR(
        optimizer,
        lambda step: warmup_step_factor(
            step / time_scale, steps_per_epoch, warmup_epochs, epochs, gamma
        ),
    )


def inverse_sqrt_factor(
    step: float, d_model: int, warmup_steps: int = 8000, scale: float = 2.0
) -> float:
    """Vaswani et al. (2017) / tensor2tensor ``rsqrt_decay`` with linear warm-up:

    lr(t) = scale * d_model^-0.5 * min(t^-0.5, t * warmup^-1.5),  t = optimiser step + 1.
    """
    t = step + 1
    return scale * d_model**-0.5 * min(t**-0.5, t * warmup_steps**-1.5)


def inverse_sqrt(
    optimizer: torch.optim.Optimizer,
    d_model: int,
    warmup_steps: int = 8000,
    scale: float = 2.0,
    time_scale: float = 1.0,
) -> LambdaLR:
    """The Transformer schedule (see ``inverse_sqrt_factor``), stretched by ``time_scale``; set
    the optimiser's lr to 1.0 so that the factor is the learning rate itself."""
    _check_time_scale(time_scale)
    if d_model < 1 or warmup_steps < 1:
        raise ConfigError(f"d_model={d_model} and warmup_steps={warmup_steps} must both be >= 1")
    return LambdaLR(
        optimizer,
        lambda step: inverse_sqrt_factor(step / time_scale, d_model, warmup_steps, scale),
    )


def _check_time_scale(time_scale: float) -> None:
    if not time_scale > 0:
        raise ConfigError(f"time_scale={time_scale} must be > 0 (init.budget_factor)")
