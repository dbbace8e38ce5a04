"""The tiny model and data that Trainer-level tests share (a few milliseconds per step)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def tiny_model() -> nn.Module:
    """Conv1d, BatchNorm, two Linear layers: every kind of prunable and non-prunable tensor."""
    return nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 12, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )


def loader(batch_size: int = 16) -> DataLoader:
    """256 fixed random sequences of length 12 with a learnable 4-class label."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 12, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
