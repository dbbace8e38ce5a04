"""The results record of one run: what results.json holds, as typed fields.

``RunResults.to_json()`` is what train.py writes; ``RunResults.from_json()`` is how report,
lottery source runs and tests read it back. ``method`` names what actually ran: a retrain init
variant (scratch_e, scratch_b, lottery, augmented) replaces the configured method by the
fixed-mask callback, so such a run's method is ``fixed_mask`` and the source run's method is in
``init.source_method``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Keys every results.json has had since the first format, with their types: without them a
# file is of an older format and cannot be read as a record.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "method": str,
    "model": str,
    "seed": int,
    "target_sparsity": (int, float),
    "sparsity": (int, float),
    "layer_sparsity": dict,
    "metrics": dict,
}


@dataclass
class InitRecord:
    """How the starting weights and masks were chosen (conf/init/); the ``source_*`` fields and
    ``masks_equal_source`` describe the run whose masks were retrained (``mask_from``)."""

    variant: str = "standard"
    mask_from: str | None = None
    budget_factor: float | None = None
    rewind_step: int | None = None
    save_rewind_step: int | None = None
    weights_from: str | None = None
    keep_mask: bool = False
    init_seed: int | None = None
    source_method: str | None = None
    source_sparsity: float | None = None
    source_steps: int | None = None
    source_metrics: dict[str, float] = field(default_factory=dict)
    masks_equal_source: bool | None = None

    @classmethod
    def from_json(cls, data: Any) -> InitRecord:
        if isinstance(data, str):  # older format: the variant's name only
            return cls(variant=data)
        if not isinstance(data, dict):
            raise ValueError("older format: wrong type of init")
        return cls(**_known(cls, data))


@dataclass
class FlopsRecord:
    """FLOPs of the run, in RigL's convention (``sparse_lightning/flops.py``): matmul and conv
    FLOPs (2 per multiply-add), each op scaled by the density of the masked weight it uses.

    ``inference``: one forward pass per example, ``dense`` (every mask full) and ``sparse`` (the
    final masks). ``training``: the whole run, all examples on all ranks: ``dense`` = 3 f_D per
    example and step, ``sparse`` = 3 f_S(t), or 2 f_S(t) + f_D on ``dense_gradient_steps``
    (RigL's updates); VD and l0 train dense. ``examples_per_step`` (batch x gradient
    accumulation x ranks, from the first batch: token batches vary, so there it is an
    estimate) and the ``steps`` covered. Empty (all zero) for a run that recorded none."""

    inference: dict[str, float] = field(default_factory=dict)
    training: dict[str, float] = field(default_factory=dict)
    examples_per_step: int = 0
    steps: int = 0
    dense_gradient_steps: int = 0

    @classmethod
    def from_json(cls, data: Any) -> FlopsRecord:
        return cls(**_known(cls, data)) if isinstance(data, dict) else cls()


@dataclass
class RunResults:
    """One finished run (see the module docstring for ``method``)."""

    method: str
    model: str
    data: str | None
    init: InitRecord
    seed: int
    target_sparsity: float
    sparsity: float
    layer_sparsity: dict[str, float]
    metrics: dict[str, float]
    steps: int = 0
    seconds: float = 0.0
    parameters: int = 0
    overrides: list[str] = field(default_factory=list)
    resumed_from_step: int = 0
    method_details: dict[str, Any] = field(default_factory=dict)  # method.record()
    flops: FlopsRecord = field(default_factory=FlopsRecord)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResults:
        """The record of a results.json's content; ValueError ("older format: ...") if it lacks
        a required key or has one of the wrong type. Unknown keys are ignored."""
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise ValueError(f"older format: missing {', '.join(missing)}")
        wrong = [k for k, t in REQUIRED.items() if not isinstance(data[k], t)]
        if wrong:
            raise ValueError(f"older format: wrong type of {', '.join(wrong)}")
        values = _known(cls, data)
        values["init"] = InitRecord.from_json(data.get("init", "standard"))
        values["flops"] = FlopsRecord.from_json(data.get("flops"))
        values.setdefault("data", None)
        return cls(**values)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
