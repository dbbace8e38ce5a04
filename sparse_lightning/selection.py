"""Which weights a method prunes: chosen by fully-qualified parameter name (the names of the
wrapped model's own ``state_dict``, e.g. ``conv1.weight``), never by module type alone, so any
parameter can be named and a tied weight counts once."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from sparse_lightning.errors import ConfigError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Embedding,
)


def default_prunable_names(model: nn.Module) -> list[str]:
    """Weights of conv, linear and embedding layers, in registration order; never biases or norms.

    A weight shared by several modules (tied embeddings) is listed once, under its first name.
    Frozen weights (``requires_grad=False``, e.g. sinusoidal position tables) are never pruned.
    """
    seen: set[int] = set()
    names = []
    for module_name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or not weight.requires_grad or id(weight) in seen:
            continue
        seen.add(id(weight))
        names.append(f"{module_name}.weight" if module_name else "weight")
    return names


def matching(names: Sequence[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def select_prunable(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    first_layer_dense: bool = False,
    last_layer_dense: bool = False,
) -> list[str]:
    """Names of the weights to prune: defaults, narrowed by glob patterns and first/last dense.

    ``include`` patterns pick among all parameters (so any parameter can be pruned); ``exclude``
    patterns drop from that set. A pattern matching nothing is an error, never a silent no-op.
    "First" and "last" layer follow module registration order.
    """
    all_names = [n for n, _ in model.named_parameters()]
    if include:
        chosen: list[str] = []
        for pattern in include:
            hits = matching(all_names, pattern)
            if not hits:
                raise ConfigError(
                    f"include pattern '{pattern}' matches no parameter; "
                    f"parameters are e.g. {examples(all_names)}"
                )
            chosen += [n for n in hits if n not in chosen]
        chosen = [n for n in all_names if n in chosen]
    else:
        chosen = default_prunable_names(model)
    for pattern in exclude:
        hits = matching(chosen, pattern)
        if not hits:
            raise ConfigError(
                f"exclude pattern '{pattern}' matches no prunable weight; "
                f"prunable weights are {examples(chosen)}"
            )
        chosen = [n for n in chosen if n not in hits]
    if first_layer_dense and chosen:
        chosen = chosen[1:]
    if last_layer_dense and chosen:
        chosen = chosen[:-1]
    if not chosen:
        raise ConfigError("the layer selection leaves no weight to prune")
    return chosen


def examples(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


@dataclass(frozen=True)
class LayerSelection:
    """The prunable weights of a model: the default set (conv, linear and embedding weights) or
    ``include`` glob patterns, minus ``exclude`` patterns, then the first / last one dropped."""

    include: Sequence[str] | None = None
    exclude: Sequence[str] = field(default_factory=tuple)
    first_layer_dense: bool = False
    last_layer_dense: bool = False

    def select(self, model: nn.Module) -> list[str]:
        return select_prunable(
            model,
            list(self.include) if self.include else None,
            list(self.exclude or ()),
            bool(self.first_layer_dense),
            bool(self.last_layer_dense),
        )
