"""torchvision ResNets with the initialisation used by Gale et al. (2019) for ResNet-50.

Goyal et al. (2017), "Accurate, Large Minibatch SGD": the last BatchNorm gamma of every residual
block starts at zero (each block starts as the identity), and the classifier is drawn from
N(0, 0.01^2) with zero bias. No pretrained weights are ever loaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from sparse_lightning.errors import ConfigError

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
FC_INIT_STD = 0.01


def build_resnet(
    arch: str = "resnet50",
    num_classes: int = 1000,
    zero_init_residual: bool = True,
    fc_init_std: float = FC_INIT_STD,
    channels_last: bool = False,
) -> nn.Module:
    """A randomly initialised torchvision ResNet with the paper's init.

    ``channels_last`` stores the convolution weights NHWC, the fast layout for bf16 convolutions
    on tensor-core GPUs (mask buffers made with ``ones_like`` keep the same layout).
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch='{arch}' is not one of {', '.join(ARCHITECTURES)}")
    if num_classes < 1:
        raise ConfigError(f"model.num_classes={num_classes} must be positive")
    model = getattr(resnet, arch)(
        weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )
    with torch.no_grad():
        nn.init.normal_(model.fc.weight, mean=0.0, std=fc_init_std)
        nn.init.zeros_(model.fc.bias)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
