"""A small 1-D convolutional classifier for MNIST-1D, wide enough to have room to prune."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def cnn1d(
    in_channels: int = 1,
    num_classes: int = 10,
    channels: Sequence[int] = (64, 128, 128),
    hidden: int = 256,
    length: int = 40,
    kernel_size: int = 5,
) -> nn.Sequential:
    """Conv-BN-ReLU blocks (stride 2 after the first), then a two-layer classifier head.

    Expects inputs of shape (batch, in_channels, length).
    """
    layers: list[nn.Module] = []
    width, size = in_channels, length
    for i, out in enumerate(channels):
        stride = 1 if i == 0 else 2
        layers += [
            nn.Conv1d(width, out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm1d(out),
            nn.ReLU(inplace=True),
        ]
        width, size = out, (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1
    layers += [
        nn.Flatten(),
        nn.Linear(width * size, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*layers)
