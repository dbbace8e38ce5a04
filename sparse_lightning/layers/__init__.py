"""Variational dropout and l0 reparameterised layers: the math (formula + citation in each
module's docstring) and the in-place layer conversion used by the VD and l0 callbacks."""

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
