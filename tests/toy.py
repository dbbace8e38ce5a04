"""The tiny model and data that Trainer-level tests share (a few milliseconds per step)."""

from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lightning.modules import ClassificationModule


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


def loader(batch_size: int = 16, shuffle: bool = True) -> DataLoader:
    """256 fixed random sequences of length 12 with a learnable 4-class label."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 12, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def fit(
    method: pl.Callback,
    steps: int = 20,
    ckpt_path=None,
    root=None,
    callbacks: Sequence[pl.Callback] = (),
    shuffle: bool = True,
    before: Sequence[pl.Callback] = (),
) -> tuple[ClassificationModule, pl.Trainer]:
    """Train ``tiny_model`` with ``method`` for ``steps`` steps (SGD, batch 32), optionally from
    a checkpoint; checkpoints only where ``callbacks`` hold a ModelCheckpoint. ``before`` run
    their hooks ahead of the method's (Lightning calls callbacks in list order)."""
    module = ClassificationModule(
        tiny_model(),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
        num_classes=4,
    )
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[*before, method, *callbacks],
        logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=root,
    )
    trainer.fit(module, loader(batch_size=32, shuffle=shuffle), ckpt_path=ckpt_path)
    return module, trainer
