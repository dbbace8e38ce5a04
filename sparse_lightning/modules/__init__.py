"""LightningModules: one per task, each summing the loss terms that sparsity callbacks register."""

from sparse_lightning.modules.classification import ClassificationModule
from sparse_lightning.modules.translation import TranslationModule

__all__ = ["ClassificationModule", "TranslationModule"]
