"""Sparsity methods as Lightning callbacks (one module per method)."""

from sparse_lightning.callbacks.base import DenseBaseline, SparsityCallback
from sparse_lightning.callbacks.l0 import L0Regularization
from sparse_lightning.callbacks.magnitude import GradualPruning, MagnitudePruning
from sparse_lightning.callbacks.random import RandomPruning
from sparse_lightning.callbacks.variational_dropout import RegularisedSparsity, VariationalDropout

__all__ = [
    "DenseBaseline",
    "GradualPruning",
    "L0Regularization",
    "MagnitudePruning",
    "RandomPruning",
    "RegularisedSparsity",
    "SparsityCallback",
    "VariationalDropout",
]
