"""Float32 regions for the VD and l0 math under mixed precision.

Under ``trainer=gpu`` (``precision: bf16-mixed``, i.e. autocast) matmuls and convolutions run
in bfloat16, whose 8 significant bits resolve 2^-8 (0.4 %) of a value. VD's output noise
sqrt(x^2 * sigma^2) at log_sigma2 = -15 (log_alpha clipped at -8, so sigma^2 = e^-8 theta^2) is
about 1-2 % of the mean it is added to in a Transformer layer, a few bfloat16 steps of it:
added in bfloat16 it is rounded to a few coarse levels or to nothing, and the variance matmul
itself keeps only 8 bits.
The sampling and the gate math therefore run with autocast off on float32 tensors; only the
layers' mean matmuls stay in the autocast dtype, as every other layer's do.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

LOW_PRECISION = (torch.bfloat16, torch.float16)


def full_precision(device_type: str) -> AbstractContextManager:
    """Autocast off on ``device_type`` (a no-op where autocast does not exist for it): ops inside
    run in their inputs' dtype, so callers pass tensors through ``widened`` first."""
    available = getattr(torch.amp, "is_autocast_available", None)
    if available is not None and not available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is a 16-bit float (autocast's outputs), else itself: float32
    and float64 inputs are kept as they are, without a copy."""
    return tensor.float() if tensor.dtype in LOW_PRECISION else tensor
