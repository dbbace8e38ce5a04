"""Which implementation computes the VD / l0 passes: chosen once per run (``method.backend``).

- ``torch``: the PyTorch formulation in the math modules (any device, any dtype);
- ``native``: the fused CPU kernels (``native.py``, ``kernels.c``) for CPU float32 contiguous
  tensors, the PyTorch formulation for any other; an error where the kernels cannot be built;
- ``auto``: ``native`` where the kernels can be built (and ``SPARSE_LIGHTNING_NATIVE`` is not
  ``0``), else ``torch``.

The math modules (``variational_dropout.py``, ``l0.py``, ``noise.py``) ask ``fused(*tensors)``
at each pass: the ``native`` module where it is the backend and takes those tensors, else None,
and they run their own PyTorch path. The two backends compute the same formulas (tested against
float64 autograd) but draw different random numbers (Philox in the kernels, PyTorch generators
otherwise), which is why a run records the backend it used.
"""

from __future__ import annotations

from types import ModuleType

import torch

from sparse_lightning.errors import ConfigError

BACKENDS = ("auto", "native", "torch")
_chosen = "auto"


def _native_available() -> bool:
    from sparse_lightning.layers.backends import build

    return build.library() is not None


def _resolve(name: str) -> str:
    return "native" if name != "torch" and _native_available() else "torch"


def use_backend(name: str) -> str:
    """Select the backend for this process; returns the one that will run (``native`` or
    ``torch``), which results.json records because their random numbers differ."""
    global _chosen
    if name not in BACKENDS:
        raise ConfigError(f"backend='{name}' is not one of {', '.join(BACKENDS)}")
    if name == "native" and not _native_available():
        raise ConfigError(
            "backend='native' but the fused CPU kernels cannot be built here (no C compiler, "
            "or SPARSE_LIGHTNING_NATIVE=0); use backend=auto or backend=torch"
        )
    _chosen = name
    return _resolve(name)


def active() -> str:
    """The backend that runs: ``native`` or ``torch``, as selected by the last ``use_backend``
    call (``auto`` until then)."""
    return _resolve(_chosen)


def fused(*tensors: torch.Tensor) -> ModuleType | None:
    """The ``native`` backend module if it is the active backend and can take ``tensors`` (CPU,
    float32, contiguous, all of one size), else None: the caller runs its PyTorch path."""
    first = tensors[0]
    takes = all(
        t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.is_contiguous()
        and t.numel() == first.numel()
        for t in tensors
    )
    if not takes or active() != "native":
        return None
    from sparse_lightning.layers.backends import native

    return native
