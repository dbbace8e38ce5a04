"""Variational dropout and l0 reparameterised layers: the math (formula + citation in each
module's docstring, one PyTorch path each), the in-place layer conversion used by the VD and l0
callbacks, and ``backends/``: which implementation runs the fused passes (chosen once per run)."""

from sparse_lightning.layers.reparameterise import (
    L0_CLASSES,
    VD_CLASSES,
    L0Layer,
    VariationalDropoutLayer,
    optimizer_groups,
    reparameterise,
    strip_reparameterisation,
)

__all__ = [
    "L0_CLASSES",
    "VD_CLASSES",
    "L0Layer",
    "VariationalDropoutLayer",
    "optimizer_groups",
    "reparameterise",
    "strip_reparameterisation",
]
