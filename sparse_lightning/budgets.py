"""Layer budgets: how a global sparsity target is shared out among the prunable weights.

A budget maps the selected weights' shapes and the global target to one target per weight
(``targets``) and says which weights ``scope=global`` may rank together (``pooled``): those whose
target the budget does not fix. Overrides (``layer_sparsity``: glob pattern -> target) fix a
weight's target under every budget.

- ``UniformBudget``: every weight at the global target (Gale et al. 2019).
- ``ErdosRenyiBudget``: density proportional to (n_in + n_out) / (n_in * n_out) (Erdos-Renyi,
  Mocanu et al. 2018) or, with ``kernel=True``, to sum(shape) / prod(shape) (Erdos-Renyi-Kernel,
  Evci et al. 2020), scaled so that the free weights together keep what the uniform budget keeps;
  a weight whose density would exceed 1 is made dense and the rest rescaled, as in RigL's
  ``sparse_utils.get_sparsities_erdos_renyi``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from sparse_lightning.errors import ConfigError
from sparse_lightning.selection import examples, matching

Shapes = Mapping[str, Sequence[int]]


class LayerBudget(Protocol):
    """What a method asks of a budget."""

    name: str

    def targets(self, shapes: Shapes, sparsity: float) -> dict[str, float]: ...

    def pooled(self, names: Sequence[str]) -> list[str]: ...


def overridden_targets(names: Sequence[str], overrides: Mapping[str, float]) -> dict[str, float]:
    """{weight: target} of the weights an override pattern names (later patterns win). A pattern
    matching no prunable weight, or a target outside [0, 1), is an error."""
    fixed: dict[str, float] = {}
    for pattern, value in overrides.items():
        value = float(value)
        if not 0.0 <= value < 1.0:
            raise ConfigError(
                f"layer_sparsity['{pattern}']={value} is outside the allowed range [0, 1)"
            )
        hits = matching(names, pattern)
        if not hits:
            raise ConfigError(
                f"layer_sparsity pattern '{pattern}' matches no prunable weight; "
                f"prunable weights are {examples(names)}"
            )
        fixed.update(dict.fromkeys(hits, value))
    return fixed


class UniformBudget:
    """Every weight at the global target, except those a ``layer_sparsity`` pattern names."""

    name = "uniform"

    def __init__(self, layer_sparsity: Mapping[str, float] | None = None) -> None:
        self.layer_sparsity = dict(layer_sparsity or {})

    def targets(self, shapes: Shapes, sparsity: float) -> dict[str, float]:
        targets = dict.fromkeys(shapes, float(sparsity))
        targets.update(overridden_targets(list(shapes), self.layer_sparsity))
        return targets

    def pooled(self, names: Sequence[str]) -> list[str]:
        """Weights no override names: under ``scope=global`` the others keep their own target,
        even one equal to the global target."""
        fixed = overridden_targets(names, self.layer_sparsity)
        return [n for n in names if n not in fixed]


def erdos_renyi_scale(shape: Sequence[int], kernel: bool) -> float:
    """The unnormalised density of a weight: sum(shape) / prod(shape) with ``kernel`` (ERK),
    else (n_in + n_out) / (n_in * n_out) over PyTorch's (out, in, ...) layout (ER)."""
    if kernel or len(shape) < 2:
        return sum(shape) / math.prod(shape)
    n_out, n_in = shape[0], shape[1]
    return (n_in + n_out) / (n_in * n_out)


class ErdosRenyiBudget:
    """Erdos-Renyi (``kernel=False``) or Erdos-Renyi-Kernel (``kernel=True``) densities.

    With free weights F (no override), dense-made weights D and N_l entries per weight, the scale
    eps solves  eps * sum_{l in F} p_l N_l = sum_{l in F} (N_l - z_l) - sum_{l in D} z_l  with
    z_l = floor(s N_l) (RigL's count); weight l gets density eps * p_l. Whenever the largest
    density exceeds 1, the weights with the largest p_l join D and eps is solved again.
    Weights named by ``layer_sparsity`` take their own target and are not compensated for,
    as in RigL's ``custom_sparsity_map``.
    """

    def __init__(
        self, kernel: bool = True, layer_sparsity: Mapping[str, float] | None = None
    ) -> None:
        self.kernel = bool(kernel)
        self.name = "erk" if self.kernel else "er"
        self.layer_sparsity = dict(layer_sparsity or {})

    def targets(self, shapes: Shapes, sparsity: float) -> dict[str, float]:
        fixed = overridden_targets(list(shapes), self.layer_sparsity)
        free = {n: s for n, s in shapes.items() if n not in fixed}
        numel = {n: math.prod(s) for n, s in free.items()}
        scale = {n: erdos_renyi_scale(s, self.kernel) for n, s in free.items()}
        dense: set[str] = set()
        while True:
            zeros = {n: math.floor(sparsity * numel[n]) for n in free}
            rhs = sum(numel[n] - zeros[n] for n in free if n not in dense)
            rhs -= sum(zeros[n] for n in dense)
            divisor = sum(scale[n] * numel[n] for n in free if n not in dense)
            if divisor == 0:  # every free weight made dense
                eps = 0.0
                break
            eps = rhs / divisor
            largest = max(scale[n] for n in free if n not in dense)
            if largest * eps <= 1.0:
                break
            dense |= {n for n in free if n not in dense and scale[n] == largest}
        targets = {n: 0.0 if n in dense else 1.0 - eps * scale[n] for n in free}
        targets.update(fixed)
        return {n: targets[n] for n in shapes}

    def pooled(self, names: Sequence[str]) -> list[str]:
        """None: each weight's density is the budget's choice."""
        return []
