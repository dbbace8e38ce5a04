"""l0 regularisation with hard concrete gates (Louizos et al. 2018) as a callback."""

from __future__ import annotations

from sparse_lightning.callbacks.variational_dropout import RegularisedSparsity
from sparse_lightning.layers.reparameterise import L0_CLASSES


class L0Regularization(RegularisedSparsity):
    """loss = task + weight(t) * E[||z||_0]; a weight is pruned where its evaluation gate is 0.

    Sparsity is the outcome of ``weight``. At the end of training the evaluation gate is folded
    into the plain weight (see ``L0Layer.fold_``), so exported weights need no gate.
    """

    method_name = "l0"
    layer_classes = L0_CLASSES
    loss_name = "l0"
    weight_name = "weight"

    def describe_state(self) -> str:
        return f"{self._range('log_alpha')}, {self._range('weight')}"
