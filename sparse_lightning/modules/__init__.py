"""LightningModules: one per task, each summing the loss terms that sparsity callbacks register."""

from sparse_lightning.modules.classification import ClassificationModule

__all__ = ["ClassificationModule"]
