"""The augmented initialisation: a fresh draw whose variance is scaled to each masked layer's
non-zeros (Gale et al. 2019, sec. 5.1), so a sparse layer starts with the signal variance a
dense one has."""

from __future__ import annotations

import math

import torch
from torch import nn

from sparse_lightning.errors import ConfigError


def sparse_glorot_limit(fan_in: int, fan_out: int, nnz: int) -> float:
    """Bound of the sparse Glorot uniform init: sqrt(6 / (nnz/fan_out + nnz/fan_in)).

    Gale et al. (2019, sec. 5.1, Transformer): Glorot & Bengio (2010)'s sqrt(6 / (fan_in +
    fan_out)) with each fan replaced by the mean number of non-zeros per output / input unit;
    equal to Glorot's when nnz = fan_in * fan_out.
    """
    return math.sqrt(6.0 / (nnz / fan_out + nnz / fan_in))


def sparse_embedding_std(hidden_dim: int, sparsity: float) -> float:
    """Std of the sparse normal init of an embedding: (d * (1 - s))^-1/2.

    The reference Transformer (``sparse_transformer/layers/sparse_modalities._get_weights``)
    draws its shared embedding / softmax from N(0, d^-1/2) and, for retraining a fixed mask,
    from N(0, (d * (1 - s))^-1/2) with d the hidden size: the dense std scaled to the non-zeros
    of each row. Glorot's rule would start the 32k x 512 table ~4x smaller than scratch does.
    """
    return (hidden_dim * (1.0 - sparsity)) ** -0.5


def sparse_he_std(sparsity: float, kernel_numel: int, out_channels: int) -> float:
    """Std of the sparse He normal init: sqrt(2 / ((1 - s) * k^2 * C_out)).

    Gale et al. (2019, sec. 5.1, ResNet-50): He et al. (2015)'s fan-out rule sqrt(2 / (k^2 *
    C_out)) with the fan scaled by the layer's density 1 - s; ``kernel_numel`` is k^2 for a 2-D
    kernel (the product of the kernel's sizes in general).
    """
    return math.sqrt(2.0 / ((1.0 - sparsity) * kernel_numel * out_channels))


@torch.no_grad()
def augmented_weight(
    module: nn.Module, attr: str, mask: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """A new value for ``module.<attr>`` drawn by the augmented rule for its layer type, on the
    CPU; entries outside ``mask`` are zero."""
    weight = getattr(module, attr)
    nnz = int(mask.sum())
    out = torch.zeros(weight.shape, dtype=weight.dtype)
    if nnz == 0:
        return out
    if attr == "weight" and isinstance(module, nn.modules.conv._ConvNd):
        std = sparse_he_std(
            1.0 - nnz / mask.numel(), math.prod(module.kernel_size), module.out_channels
        )
        out.normal_(0.0, std, generator=generator)
    elif attr == "weight" and isinstance(module, nn.Embedding):
        std = sparse_embedding_std(weight.shape[1], 1.0 - nnz / mask.numel())
        out.normal_(0.0, std, generator=generator)
    elif attr == "weight" and isinstance(module, nn.Linear):
        fan_out, fan_in = weight.shape  # Linear: (out, in); the rule is symmetric in the fans
        limit = sparse_glorot_limit(fan_in, fan_out, nnz)
        out.uniform_(-limit, limit, generator=generator)
    else:
        raise ConfigError(
            f"init=augmented has rules for conv, linear and embedding weights only; the masked "
            f"'{attr}' of {type(module).__name__} has none"
        )
    return out * mask.to("cpu")
