"""Sparsity schedules: when masks change and to what sparsity."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sparse_lightning.errors import ConfigError


def whole_number(name: str, value: object) -> int:
    """``value`` as an int (a step count), or a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigError(f"{name}={value!r} is not a whole number of steps")
    return int(value)


@dataclass(frozen=True)
class PolynomialSchedule:
    """Gradual pruning schedule of Zhu & Gupta (2017), "To prune, or not to prune".

    s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** power   for t_0 <= t <= t_end,

    s_0 before t_0 and s_f after t_end. Masks change every ``frequency`` optimiser steps counted
    from ``begin_step``, and always at ``end_step`` so that the final sparsity is reached even
    when ``end_step - begin_step`` is not a multiple of ``frequency``.
    """

    final_sparsity: float
    begin_step: int
    end_step: int
    frequency: int
    initial_sparsity: float = 0.0
    power: int = 3

    def __post_init__(self) -> None:
        for name in ("begin_step", "end_step", "frequency", "power"):
            object.__setattr__(self, name, whole_number(name, getattr(self, name)))
        for name in ("final_sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name}={value!r} is not a number")
            if not 0.0 <= value < 1.0:
                what = "sparsity target " if name == "final_sparsity" else f"{name}="
                raise ConfigError(f"{what}{value} is outside the allowed range [0, 1)")
        if self.begin_step < 0:
            raise ConfigError(f"begin_step={self.begin_step} must be >= 0")
        if self.begin_step >= self.end_step:
            raise ConfigError(
                f"begin_step={self.begin_step} must be smaller than end_step={self.end_step}"
            )
        if self.frequency <= 0:
            raise ConfigError(f"frequency={self.frequency} must be a positive number of steps")
        if self.power < 1:
            raise ConfigError(f"power={self.power} must be >= 1")

    def sparsity_at(self, step: int) -> float:
        """Scheduled sparsity after ``step`` optimiser steps."""
        if step <= self.begin_step:
            return self.initial_sparsity
        if step >= self.end_step:
            return self.final_sparsity
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        return (
            self.final_sparsity
            + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** self.power
        )

    def progress_at(self, step: int) -> float:
        """How far ``step`` is along the schedule's curve: 0 up to ``begin_step``, then
        1 - (1 - (t - t_0) / (t_end - t_0)) ** power, 1 from ``end_step`` on."""
        if step <= self.begin_step:
            return 0.0
        if step >= self.end_step:
            return 1.0
        progress = (step - self.begin_step) / (self.end_step - self.begin_step)
        return 1.0 - (1.0 - progress) ** self.power

    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed after ``step`` optimiser steps."""
        if step < self.begin_step or step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0 or step == self.end_step


RAMP_SHAPES = ("linear", "cubic")


@dataclass(frozen=True)
class RegulariserRamp:
    """The share of its final weight a regulariser (VD's KL, l0's expected norm) has after
    ``step`` optimiser steps: 0 up to ``begin_step``, 1 from ``end_step``; in between, with
    p = (step - begin) / (end - begin), p ("linear", the reference code's ramp) or 1 - (1 - p)^3
    ("cubic", the Zhu & Gupta curve of the pruning schedule)."""

    begin_step: int
    end_step: int
    shape: str = "linear"

    def __post_init__(self) -> None:
        for name in ("begin_step", "end_step"):
            object.__setattr__(self, name, whole_number(name, getattr(self, name)))
        if self.begin_step < 0:
            raise ConfigError(f"begin_step={self.begin_step} must be >= 0")
        if self.begin_step > self.end_step:
            raise ConfigError(
                f"begin_step={self.begin_step} must not be after end_step={self.end_step}"
            )
        if self.shape not in RAMP_SHAPES:
            raise ConfigError(f"ramp shape='{self.shape}' is not one of {', '.join(RAMP_SHAPES)}")

    def fraction_at(self, step: int) -> float:
        begin, end = self.begin_step, self.end_step
        if step <= begin:
            return 0.0 if step < end else 1.0
        if step >= end:
            return 1.0
        p = (step - begin) / (end - begin)
        return p if self.shape == "linear" else 1.0 - (1.0 - p) ** 3


DROP_DECAYS = ("cosine", "constant")


@dataclass(frozen=True)
class DropFractionSchedule:
    """When sparse training from scratch (SET, RigL) updates its masks, and what fraction of the
    live weights each update drops and regrows (RigL's ``sparse_optimizers.py``).

    An update happens at ``begin_step <= t <= end_step`` every ``frequency`` steps counted from
    ``begin_step``. The fraction is f_0 ("constant") or, as RigL's default, TF's cosine decay
    f(t) = f_0 / 2 * (1 + cos(pi * min(t, T) / T)) with T = end_step - begin_step ("cosine").
    """

    begin_step: int
    end_step: int
    frequency: int
    drop_fraction: float = 0.3
    decay: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("begin_step", "end_step", "frequency"):
            object.__setattr__(self, name, whole_number(name, getattr(self, name)))
        if self.begin_step < 0 or self.begin_step >= self.end_step:
            raise ConfigError(
                f"begin_step={self.begin_step} must be >= 0 and smaller than "
                f"end_step={self.end_step}"
            )
        if self.frequency <= 0:
            raise ConfigError(f"frequency={self.frequency} must be a positive number of steps")
        if not 0.0 < float(self.drop_fraction) <= 1.0:
            raise ConfigError(f"drop_fraction={self.drop_fraction} is outside (0, 1]")
        if self.decay not in DROP_DECAYS:
            raise ConfigError(f"decay='{self.decay}' is not one of {', '.join(DROP_DECAYS)}")

    def is_update_step(self, step: int) -> bool:
        if step < self.begin_step or step > self.end_step:
            return False
        return (step - self.begin_step) % self.frequency == 0

    def fraction_at(self, step: int) -> float:
        if self.decay == "constant":
            return float(self.drop_fraction)
        span = self.end_step - self.begin_step
        return float(self.drop_fraction) / 2 * (1 + math.cos(math.pi * min(step, span) / span))
