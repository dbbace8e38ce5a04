"""Buffers reused from one training step to the next by a layer's fused VD / l0 pass.

Why: PyTorch's CPU allocator has no cache, so a fresh weight-sized temporary costs page faults
that take longer than the arithmetic written into it (on resnet18, ~3x a fused elementwise pass).
The temporaries and saved tensors of the fused passes are therefore written into buffers kept
per layer; outputs and gradients stay fresh (autograd and the optimiser own them).

A workspace serves one forward/backward at a time: a forward that finds it busy (a second
forward before the first one's backward) allocates fresh tensors instead, so reuse never
overwrites a tensor that a pending backward still needs. ``release()`` frees a workspace whose
graph was dropped without a backward (the callbacks call it at every batch start).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class Workspace:
    """Named buffers shaped like one weight tensor, reused across steps."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.busy = False

    def buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor like ``like`` (contiguous), the same one every call."""
        found = self._buffers.get(name)
        if (
            found is None
            or found.shape != like.shape
            or found.dtype != like.dtype
            or found.device != like.device
        ):
            found = self._buffers[name] = torch.empty_like(
                like, memory_format=torch.contiguous_format
            )
        return found

    def release(self) -> None:
        self.busy = False


def claim(workspace: Workspace | None, like: torch.Tensor) -> tuple[Callable, Workspace | None]:
    """(new(name) -> tensor like ``like``, the workspace now busy or None): buffers from the
    workspace if it is free and a backward will follow (grad mode), fresh tensors otherwise."""
    if workspace is None or workspace.busy or not torch.is_grad_enabled():
        return lambda name: torch.empty_like(like, memory_format=torch.contiguous_format), None
    workspace.busy = True
    return lambda name: workspace.buffer(name, like), workspace
