"""Layers whose weight is reparameterised for variational dropout or l0 gates, in place.

A selected ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Embedding`` keeps its object, its
``weight`` Parameter (now theta) and ``bias``; only its class changes to a subclass that adds one
Parameter beside the weight (``log_sigma2`` or ``log_alpha``) and overrides ``forward``. So every
name (``conv1.weight``, ``conv1.weight_mask``), every reference held elsewhere (mask sets,
optimiser groups built later) and ``state_dict`` loading stay as they are; the extra Parameter is
one more ``state_dict`` entry (``conv1.log_sigma2``), checkpointed and restored by Lightning.
Swapping ``__class__`` rather than building a new module avoids copying weights and re-pointing
every holder of the old module; the classes are importable, so pickling and ``deepcopy`` work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.layers import l0 as l0_math
from sparse_lightning.layers import variational_dropout as vd_math
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.layers.workspace import Workspace

VD_PARAMETER = "log_sigma2"
L0_PARAMETER = "log_alpha"
EXTRA_PARAMETERS = (VD_PARAMETER, L0_PARAMETER)
MASK_BUFFER = "weight_mask"  # masks.py: "<attr>_mask" beside the weight


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient times ``scale`` backward: a learning-rate multiplier for the
    extra Parameter under SGD (Adam is invariant to it). Lives in the graph, not in a tensor hook,
    so layers stay picklable and deep-copyable."""

    @staticmethod
    def forward(ctx, tensor, scale):  # type: ignore[override]
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """``tensor`` whose gradient is multiplied by ``scale`` (no-op for 1)."""
    return tensor if scale == 1.0 else _ScaleGradient.apply(tensor, scale)


def _conv_op(module: nn.Module):
    return module._conv_forward  # (input, weight, bias), handles padding modes


def _linear_op(module: nn.Module):
    return F.linear


def _embedding(module: nn.Embedding, idx: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return F.embedding(idx, table, module.padding_idx, None, 2.0, module.scale_grad_by_freq)


class _Reparameterised:
    """Shared by every reparameterised layer: the (possibly) masked weight and its mask.

    A training forward computes the layer's regulariser in the same fused pass over the weight
    and keeps it until ``regulariser()`` hands it to the loss; transient tensors (that pending
    term, reused noise buffers) are left out of pickles and copies.
    """

    weight: nn.Parameter
    _TRANSIENT = ("_pending_regulariser", "_workspace", "noise_source")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._TRANSIENT:
            state.pop(key, None)
        return state

    @property
    def noise_source(self) -> NoiseSource | None:
        """Where training noise comes from (set by the VD / l0 callback); None: the global
        generator."""
        return self.__dict__.get("noise_source")

    @noise_source.setter
    def noise_source(self, source: NoiseSource | None) -> None:
        self.__dict__["noise_source"] = source

    def workspace(self) -> Workspace:
        """Buffers the fused training pass reuses across steps (not pickled or copied)."""
        found = self.__dict__.get("_workspace")
        if found is None:
            found = self.__dict__["_workspace"] = Workspace()
        return found

    def _take_pending(self) -> torch.Tensor | None:
        return self.__dict__.pop("_pending_regulariser", None)

    def _mask(self) -> torch.Tensor | None:
        return getattr(self, MASK_BUFFER, None)

    def _plain_forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(self, nn.Embedding):
            return _embedding(self, x, weight)
        op = _conv_op(self) if isinstance(self, nn.modules.conv._ConvNd) else _linear_op(self)
        return op(x, weight, self.bias)


class VariationalDropoutLayer(_Reparameterised):
    """Sparse variational dropout on ``weight`` (= theta) with a ``log_sigma2`` Parameter."""

    log_sigma2: nn.Parameter
    vd_threshold: float
    grad_scale: float

    def reparameterise_(
        self, log_sigma2_init: float, threshold: float, grad_scale: float = 1.0
    ) -> None:
        self.register_parameter(  # type: ignore[attr-defined]
            VD_PARAMETER, nn.Parameter(torch.full_like(self.weight, float(log_sigma2_init)))
        )
        self.vd_threshold = float(threshold)
        self.grad_scale = float(grad_scale)

    def _log_sigma2(self) -> torch.Tensor:
        return scale_gradient(self.log_sigma2, self.grad_scale)

    def regulariser(self) -> torch.Tensor:
        """Sum of the per-weight KL approximation (clipped log_alpha): the one computed by the
        last training forward, else computed now."""
        pending = self._take_pending()
        return pending if pending is not None else vd_math.kl_sum(self.weight, self._log_sigma2())

    @torch.no_grad()
    def eval_keep(self) -> torch.Tensor:
        """Weights kept at evaluation: log_alpha < threshold, and not already masked."""
        keep = vd_math.keep_mask(self.weight, self.log_sigma2, self.vd_threshold)
        mask = self._mask()
        return keep & mask if mask is not None else keep

    def fold_(self) -> torch.Tensor:
        """Nothing to fold: the evaluation weight is theta masked (the caller sets the mask)."""
        return self.eval_keep()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._plain_forward(x, self.weight * self.eval_keep())
        sigma2, kl = vd_math.variance_and_kl(
            self.weight, self.log_sigma2, self.workspace(), self.grad_scale
        )
        self._pending_regulariser = kl
        if isinstance(self, nn.Embedding):
            # A gather needs no local reparameterisation: sample the gathered rows' weights.
            mean = _embedding(self, x, self.weight)
            variance = _embedding(self, x, sigma2)
        else:
            op = _conv_op(self) if isinstance(self, nn.modules.conv._ConvNd) else _linear_op(self)
            mean, variance = vd_math.output_moments(op, x, self.weight, sigma2, self.bias)
        return vd_math.sample_output(mean, variance, source=self.noise_source)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variational dropout threshold={self.vd_threshold}"  # type: ignore[misc]


class L0Layer(_Reparameterised):
    """l0 hard concrete gates on ``weight`` (= theta) with a ``log_alpha`` Parameter."""

    log_alpha: nn.Parameter
    grad_scale: float

    def reparameterise_(self, grad_scale: float = 1.0) -> None:
        self.register_parameter(  # type: ignore[attr-defined]
            L0_PARAMETER, nn.Parameter(l0_math.init_log_alpha(self.weight.detach()))
        )
        self.grad_scale = float(grad_scale)

    def _log_alpha(self) -> torch.Tensor:
        return scale_gradient(self.log_alpha, self.grad_scale)

    def regulariser(self) -> torch.Tensor:
        """Expected number of non-zero gates: from the last training forward, else now."""
        pending = self._take_pending()
        return pending if pending is not None else l0_math.expected_l0(self._log_alpha())

    def gate(self) -> torch.Tensor:
        """Evaluation gate (masked); training forwards sample theirs in ``forward``."""
        gate = l0_math.eval_gate(self.log_alpha)
        mask = self._mask()
        return gate * mask if mask is not None else gate

    @torch.no_grad()
    def eval_keep(self) -> torch.Tensor:
        keep = l0_math.eval_gate(self.log_alpha) > 0
        mask = self._mask()
        return keep & mask if mask is not None else keep

    @torch.no_grad()
    def fold_(self) -> torch.Tensor:
        """Fold the evaluation gate into theta and saturate log_alpha (gate exactly 1 where kept,
        0 where pruned), so the plain weight alone gives the evaluation output; returns the keep
        mask. Idempotent."""
        keep = self.eval_keep()
        self.weight.mul_(l0_math.eval_gate(self.log_alpha)).mul_(keep)
        self.log_alpha.copy_(
            torch.where(keep, l0_math.LOG_ALPHA_ON, l0_math.LOG_ALPHA_OFF).to(self.log_alpha)
        )
        return keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._plain_forward(x, self.weight * self.gate())
        weight, penalty = l0_math.gated_weight_and_penalty(
            self.weight,
            self.log_alpha,
            source=self.noise_source,
            workspace=self.workspace(),
            grad_scale=self.grad_scale,
        )
        self._pending_regulariser = penalty
        return self._plain_forward(x, weight)


class VDLinear(VariationalDropoutLayer, nn.Linear):
    pass


class VDConv1d(VariationalDropoutLayer, nn.Conv1d):
    pass


class VDConv2d(VariationalDropoutLayer, nn.Conv2d):
    pass


class VDEmbedding(VariationalDropoutLayer, nn.Embedding):
    pass


class L0Linear(L0Layer, nn.Linear):
    pass


class L0Conv1d(L0Layer, nn.Conv1d):
    pass


class L0Conv2d(L0Layer, nn.Conv2d):
    pass


class L0Embedding(L0Layer, nn.Embedding):
    pass


VD_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: VDLinear,
    nn.Conv1d: VDConv1d,
    nn.Conv2d: VDConv2d,
    nn.Embedding: VDEmbedding,
}
L0_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: L0Linear,
    nn.Conv1d: L0Conv1d,
    nn.Conv2d: L0Conv2d,
    nn.Embedding: L0Embedding,
}


def reparameterise(
    model: nn.Module, name: str, classes: Mapping[type[nn.Module], type[nn.Module]], **init: Any
) -> nn.Module:
    """Turn the layer owning parameter ``name`` into its reparameterised class (idempotent).

    Only ``weight`` of a plain Linear / Conv1d / Conv2d / Embedding can be reparameterised; any
    other selection is a ConfigError naming the parameter and what is allowed.
    """
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if type(module) in classes.values():
        return module
    allowed = ", ".join(c.__name__ for c in classes)
    target = classes.get(type(module))
    if attr != "weight" or target is None:
        raise ConfigError(
            f"cannot reparameterise '{name}' ({type(module).__name__}.{attr}); "
            f"allowed: the weight of {allowed} (exclude it, e.g. method.exclude=['{name}'])"
        )
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.sparse):
        raise ConfigError(f"'{name}': embeddings with max_norm or sparse gradients are not allowed")
    module.__class__ = target
    module.reparameterise_(**init)  # type: ignore[attr-defined]
    return module


def optimizer_groups(module: nn.Module) -> list[dict[str, Any]]:
    """``module``'s parameters for an optimiser: the VD / l0 Parameters in a second group without
    weight decay (L2 on log_sigma2 pulls sigma^2 towards 1, on log_alpha pulls every gate towards
    1/2; neither is part of the methods), all others in the first group as configured. With no
    such Parameters there is one group, as before."""
    regular, extra = [], []
    for name, param in module.named_parameters():
        (extra if name.rpartition(".")[2] in EXTRA_PARAMETERS else regular).append(param)
    groups: list[dict[str, Any]] = [{"params": regular}]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    return groups


def strip_reparameterisation(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict without the VD / l0 Parameters (``<layer>.log_sigma2``, ``<layer>.log_alpha``
    beside a ``<layer>.weight``), so it loads into the unmodified model class."""

    def extra(key: str) -> bool:
        prefix, _, leaf = key.rpartition(".")
        sibling = f"{prefix}.weight" if prefix else "weight"
        return leaf in EXTRA_PARAMETERS and sibling in state_dict

    return {k: v for k, v in state_dict.items() if not extra(k)}
