"""Sparsity schedules: when masks change and to what sparsity."""

from __future__ import annotations

from dataclasses import dataclass

from sparse_lightning.errors import ConfigError


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
        for name in ("final_sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value} is outside the allowed range [0, 1)")
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
