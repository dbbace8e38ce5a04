"""N:M structured sparsity (``method.pattern=2:4``): parsing, the config checks, and the groups.

A pattern N:M keeps exactly N of every M consecutive weights along the input dimension. That is
the layout sparse tensor cores read: ``torch.sparse.to_sparse_semi_structured`` takes a
row-major (out, in) matrix with 2 non-zeros in every 4 along its last dimension. Groups run
along dim 1 of a weight, moved last:

- Linear (out, in): along ``in``, the matrix itself;
- Conv (out, in, *k): along the input channels at each kernel position, i.e. the weight permuted
  to (out, *k, in), as NVIDIA's ASP does (a conv lowered to a matmul reads its input channels
  contiguously at each kernel tap);
- Embedding (num, dim): along ``dim`` (and a transposed conv, stored (in, out, *k), along dim 1);
- a 1-D tensor (only if ``selection.include`` names one): along its only dimension.

The pattern fixes the sparsity at 1 - N/M in every pruned tensor, so it needs the uniform
budget at exactly that target, ranked per layer; everything else is refused before training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparse_lightning.errors import ConfigError

PATTERN_SYNTAX = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
SPARSITY_TOLERANCE = 1e-9  # a target written with 10 significant digits still matches


@dataclass(frozen=True)
class NMPattern:
    """N kept in every group of M consecutive weights (0 < N < M)."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: Any) -> NMPattern | None:
    """``"N:M"`` as an ``NMPattern``, None for null; anything else a ConfigError naming it
    (a YAML file's unquoted 2:4 arrives as the base-60 integer 124, and is refused so).

    N = M would prune nothing and N = 0 everything, so both are refused with N > M.
    """
    if text is None:
        return None
    found = PATTERN_SYNTAX.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        quote = " (in a YAML file quote it: YAML 1.1 reads 2:4 as the number 124)"
        raise ConfigError(
            f"pattern={text!r} is not of the form N:M (two integers, e.g. method.pattern=2:4)"
            + (quote if isinstance(text, int) else "")
        )
    n, m = int(found[1]), int(found[2])
    if not 0 < n < m:
        raise ConfigError(
            f"pattern={text!r} is not allowed: N:M needs 0 < N < M (N kept of every M, e.g. 2:4)"
        )
    return NMPattern(n, m)


def sparsity_hint(sparsity: float) -> str:
    """The override that sets ``sparsity`` (a ``sparsity=sNN`` option where one exists)."""
    value = f"{sparsity:.10g}"
    percent = round(sparsity * 100)
    option = f" (or sparsity=s{percent})" if percent in (50, 60, 70, 80, 90, 95, 98) else ""
    if abs(percent / 100 - sparsity) > SPARSITY_TOLERANCE:
        option = ""
    return f"sparsity.target={value}{option}"


def checked_pattern(
    text: Any, target_sparsity: float, budget: Any, scope: str = "layer"
) -> NMPattern | None:
    """The method's pattern, or a ConfigError if the rest of its config contradicts it: the
    pattern fixes every tensor's sparsity at 1 - N/M, so the target must equal that, the budget
    must be uniform without ``layer_sparsity``, and ``scope=global`` (which would move sparsity
    between layers) cannot apply."""
    pattern = parse_pattern(text)
    if pattern is None:
        return None
    if abs(target_sparsity - pattern.sparsity) > SPARSITY_TOLERANCE:
        raise ConfigError(
            f"pattern={pattern} fixes the sparsity at {pattern.sparsity:.10g} (1 - {pattern.n}/"
            f"{pattern.m}), but sparsity.target={target_sparsity:g}; use "
            f"{sparsity_hint(pattern.sparsity)}"
        )
    name = getattr(budget, "name", "uniform")
    if name != "uniform":
        raise ConfigError(
            f"budget={name} does not apply with pattern={pattern}: every tensor keeps {pattern.n} "
            f"of every {pattern.m} (use budget=uniform)"
        )
    if getattr(budget, "layer_sparsity", None):
        raise ConfigError(
            f"layer_sparsity does not apply with pattern={pattern}: every tensor keeps "
            f"{pattern.n} of every {pattern.m}; leave a layer dense with "
            f"method.selection.exclude=[...] instead"
        )
    if scope != "layer":
        raise ConfigError(
            f"scope={scope} does not apply with pattern={pattern}: every tensor keeps "
            f"{pattern.n} of every {pattern.m} (use method.scope=layer)"
        )
    return pattern


def group_size(shape: Sequence[int]) -> int:
    """The length of the dimension the groups run along (dim 1, or dim 0 of a 1-D tensor)."""
    return int(shape[1] if len(shape) >= 2 else shape[0])


def check_divisible(shapes: Mapping[str, Sequence[int]], pattern: NMPattern) -> None:
    """A ConfigError naming every selected tensor whose group dimension M does not divide, with
    the override that leaves it dense (``shapes`` in selection order)."""
    bad = [name for name, shape in shapes.items() if group_size(shape) % pattern.m]
    if not bad:
        return
    names = list(shapes)
    listed = ", ".join(
        f"{name} {tuple(shapes[name])} has {group_size(shapes[name])}" for name in bad
    )
    exclude = ",".join(f'"{name}"' for name in bad)
    hints = [f"'method.selection.exclude=[{exclude}]'"]
    if bad == names[:1]:
        hints.append("method.selection.first_layer_dense=true")
    if bad == names[-1:]:
        hints.append("method.selection.last_layer_dense=true")
    raise ConfigError(
        f"method.pattern={pattern} groups {pattern.m} consecutive weights along the input "
        f"dimension (dim 1), which must be a multiple of {pattern.m}: {listed}; leave "
        f"{'it' if len(bad) == 1 else 'them'} dense with {' or '.join(hints)}"
    )


def check_selected(model: nn.Module, names: Sequence[str], pattern: NMPattern) -> None:
    """``check_divisible`` for the parameters ``names`` of ``model``."""
    params = dict(model.named_parameters())
    check_divisible({name: tuple(params[name].shape) for name in names}, pattern)


def grouped(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """``tensor`` as (groups, m): dim 1 moved last (see the module docstring), then rows of m.
    A copy when dim 1 is not already last (conv kernels); write results back with
    ``ungrouped``."""
    moved = tensor.movedim(1, -1) if tensor.dim() >= 2 else tensor
    return moved.reshape(-1, m)


def ungrouped(groups: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The inverse of ``grouped``: (groups, m) back to the weight's ``shape``."""
    shape = tuple(shape)
    if len(shape) < 2:
        return groups.reshape(shape)
    moved = (shape[0], *shape[2:], shape[1])
    return groups.reshape(moved).movedim(-1, 1)
