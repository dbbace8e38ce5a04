"""Which implementation computes the VD / l0 passes: chosen once per run (``method.backend``).

- ``torch``: the PyTorch formulation in the math modules (any device);
- ``native``: the fused CPU kernels (``layers/native.py``); an error where they cannot be built;
- ``auto``: ``native`` where it can be built, else ``torch``.
"""

from __future__ import annotations

from sparse_lightning.errors import ConfigError

BACKENDS = ("auto", "native", "torch")
_active = "auto"


def use_backend(name: str) -> str:
    """Select the backend for this process; returns the one that will run (``native`` or
    ``torch``), which results.json records because their random numbers differ."""
    global _active
    from sparse_lightning.layers import native

    if name not in BACKENDS:
        raise ConfigError(f"backend='{name}' is not one of {', '.join(BACKENDS)}")
    available = native.library() is not None
    if name == "native" and not available:
        raise ConfigError("backend='native' but the fused CPU kernels cannot be built here")
    _active = "native" if name != "torch" and available else "torch"
    return _active


def active() -> str:
    """The backend selected by the last ``use_backend`` call."""
    return _active
