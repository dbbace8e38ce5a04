"""Masks that come from an earlier run and never change: retraining a found sparse structure."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import MaskSet

FIXED_MASK = "fixed_mask"  # results.json's method of a run whose init variant retrains masks


class FixedMask(SparsityCallback):
    """Loads ``masks`` ({weight name: bool tensor, True = kept}) into the model; no pruning runs.

    The base class zeroes the pruned entries after every optimiser step, so they stay exactly
    zero; nothing here ever changes a mask. ``source`` names where the masks came from, for
    error messages.
    """

    method_name = FIXED_MASK

    def __init__(
        self, masks: Mapping[str, torch.Tensor], target_sparsity: float, source: str = "masks"
    ) -> None:
        super().__init__(target_sparsity=target_sparsity)
        self.source_masks = {name: mask.to(torch.bool) for name, mask in masks.items()}
        self.source = source
        if not self.source_masks:
            raise ConfigError(f"{source} holds no masks")

    def attach(self, model: nn.Module) -> MaskSet:
        if self.mask_set is not None:
            return self.mask_set
        params = dict(model.named_parameters())
        for name, mask in self.source_masks.items():
            if name not in params:
                raise ConfigError(
                    f"{self.source} is from a different model: its weight '{name}' is not a "
                    f"parameter of this model"
                )
            if tuple(params[name].shape) != tuple(mask.shape):
                raise ConfigError(
                    f"{self.source} is from a different model: '{name}' has shape "
                    f"{tuple(mask.shape)} there and {tuple(params[name].shape)} here"
                )
        self.mask_set = MaskSet(model, list(self.source_masks))
        self.mask_set.set_masks(self.source_masks)
        self.layer_targets = self.mask_set.layer_sparsity()
        self._log_selection(model, self.mask_set.names)
        return self.mask_set
