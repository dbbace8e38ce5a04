"""Sparsity methods as Lightning callbacks (one module per method)."""

from sparse_lightning.callbacks.base import DenseBaseline, SparsityCallback
from sparse_lightning.callbacks.magnitude import GradualPruning, MagnitudePruning

__all__ = ["DenseBaseline", "GradualPruning", "MagnitudePruning", "SparsityCallback"]
