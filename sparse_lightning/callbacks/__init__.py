"""Sparsity methods as Lightning callbacks, each assembled from parts: a layer selection
(``selection.py``), a layer budget (``budgets.py``), a schedule (``schedules.py``) and an update
rule (a score for gradual pruning, a regulariser for VD / l0)."""

from sparse_lightning.callbacks.base import DenseBaseline, SparsityCallback
from sparse_lightning.callbacks.gradual import GradualPruning, Score
from sparse_lightning.callbacks.l0 import L0Regularization
from sparse_lightning.callbacks.magnitude import MagnitudePruning, MagnitudeScore
from sparse_lightning.callbacks.random import RandomPruning, RandomScore
from sparse_lightning.callbacks.snip import SnipScore
from sparse_lightning.callbacks.sparse_training import GradientGrowth, RandomGrowth, SparseTraining
from sparse_lightning.callbacks.variational_dropout import RegularisedSparsity, VariationalDropout

__all__ = [
    "DenseBaseline",
    "GradientGrowth",
    "GradualPruning",
    "L0Regularization",
    "MagnitudePruning",
    "MagnitudeScore",
    "RandomGrowth",
    "RandomPruning",
    "RandomScore",
    "RegularisedSparsity",
    "Score",
    "SnipScore",
    "SparseTraining",
    "SparsityCallback",
    "VariationalDropout",
]
