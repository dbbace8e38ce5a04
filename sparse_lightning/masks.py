"""The one mask core shared by every method.

The masks of the prunable weights (chosen by ``selection.py``) as persistent
bool buffers on the module that owns the weight (``<attr>_mask`` beside ``<attr>``, so
``state_dict``, checkpoints, ``deepcopy`` and pickling carry them with no extra code), applying
the masks in place, and sparsity accounting. Names are those of the wrapped model's own
``state_dict`` (``conv1.weight``), never prefixed by a Lightning module's attribute.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class MaskedWeight:
    """One prunable weight: its name, the module that owns it and the attribute it lives in."""

    name: str
    module: nn.Module
    attr: str

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, self.attr + MASK_SUFFIX)


class MaskSet:
    """The masks of one model's prunable weights, kept as persistent buffers on their modules."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.entries: list[MaskedWeight] = []
        for name in names:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            weight = getattr(module, attr)
            buffer_name = attr + MASK_SUFFIX
            if not hasattr(module, buffer_name):
                module.register_buffer(
                    buffer_name, torch.ones_like(weight, dtype=torch.bool), persistent=True
                )
            self.entries.append(MaskedWeight(name, module, attr))
        self.refresh()

    def refresh(self) -> None:
        """Re-read the tensors after the masks changed or the model moved to another device.

        The per-step multiply uses the masks in the weights' dtype: measured on resnet18 (CPU,
        2 threads) a float factor costs 2.1 ms per step against 4.6 ms for the bool buffer
        itself; the bool buffers stay the persistent record (4x smaller in checkpoints). Change
        masks through ``set_masks`` (or call ``refresh`` after writing the buffers).
        """
        self._weights = [e.weight for e in self.entries]
        self._factors = [e.mask.to(e.weight.dtype) for e in self.entries]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned entry in place (after each optimiser step and each mask change)."""
        torch._foreach_mul_(self._weights, self._factors)

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Replace masks (True = kept) and zero the newly pruned weights at once."""
        for entry in self.entries:
            if entry.name in masks:
                entry.mask.copy_(masks[entry.name])
        self.refresh()
        self.apply_()

    def masks(self) -> dict[str, torch.Tensor]:
        """Copies of the current masks on the CPU, ``{name: bool tensor}``."""
        return {e.name: e.mask.detach().to("cpu", copy=True) for e in self.entries}

    def layer_sparsity(self) -> dict[str, float]:
        """Fraction of pruned entries per weight."""
        counts = self._counts()
        return {name: 1.0 - kept / total for name, (kept, total) in counts.items()}

    def sparsity(self) -> float:
        """Fraction of pruned entries over all prunable weights together."""
        counts = self._counts().values()
        total = sum(t for _, t in counts)
        return 1.0 - sum(k for k, _ in counts) / total if total else 0.0

    def _counts(self) -> dict[str, tuple[int, int]]:
        kept = torch.stack([e.mask.sum() for e in self.entries]).tolist()  # one host sync
        return {e.name: (k, e.mask.numel()) for e, k in zip(self.entries, kept)}


def strip_masks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict without mask buffers, loadable into the unmodified model class."""
    return {k: v for k, v in state_dict.items() if not _is_mask_key(k, state_dict)}


def _is_mask_key(key: str, state_dict: Mapping[str, torch.Tensor]) -> bool:
    return key.endswith(MASK_SUFFIX) and key[: -len(MASK_SUFFIX)] in state_dict


def add_missing_mask_buffers(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Register the mask buffers a saved state_dict carries, so it loads into a fresh model."""
    for key in state_dict:
        if not key.endswith(MASK_SUFFIX):
            continue
        module_name, _, buffer_name = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue
        attr = buffer_name[: -len(MASK_SUFFIX)]
        if hasattr(module, attr) and not hasattr(module, buffer_name):
            module.register_buffer(
                buffer_name, torch.ones_like(getattr(module, attr), dtype=torch.bool)
            )
