"""Layers whose weight is reparameterised for variational dropout or l0 gates, in place.

A selected ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Embedding`` keeps its object, its
``weight`` Parameter (now theta) and ``bias``; only its class changes to a subclass that adds one
Parameter beside the weight (``log_sigma2`` or ``log_alpha``) and overrides ``forward``. So every
name (``conv1.weight``, ``conv1.weight_mask``), every reference held elsewhere (mask sets,
optimiser groups built later) and ``state_dict`` loading stay as they are; the extra Parameter is
one more ``state_dict`` entry (``conv1.log_sigma2``), checkpointed and restored by Lightning.
Swapping ``__class__`` rather than building a new module avoids copying weights and re-pointing
every holder of the old module; the classes are importable, so pickling and ``deepcopy`` work.

A weight used by several modules (a Transformer's embedding, also its softmax layer) is
reparameterised at every use, as Gale et al.'s reference code does (``sparse_modalities.py``:
VD / l0 at the embedding lookups and at the output matmul): the module named in the selection
owns the one extra Parameter and the mask; every other module holding the weight is "tied" to
it and registers that same Parameter (so each use's ``state_dict`` has it beside its weight, as
it has the weight, and ``named_parameters`` / the optimiser see it once). The owner's
regulariser counts the weight once; the evaluation rule, ``fold_`` and the mask are the owner's.
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

    A module holding the same weight as another reparameterised one is tied to it (``tie_``):
    it registers its owner's extra Parameter, reads the owner's mask, and leaves its pending
    term for the owner's ``regulariser()``, which hands the loss one term per weight.
    """

    weight: nn.Parameter
    extra_name: str  # the added Parameter's attribute
    _SETTINGS: tuple[str, ...] = ("grad_scale",)  # what a tied use copies from its owner
    _TRANSIENT = ("_pending_regulariser", "_workspace", "noise_source")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._TRANSIENT:
            state.pop(key, None)
        return state

    @property
    def noise_source(self) -> NoiseSource | None:
        """Where training noise comes from (set by the VD / l0 callback, on the owner for every
        use of its weight); None: the global generator."""
        return self.__dict__.get("noise_source")

    @noise_source.setter
    def noise_source(self, source: NoiseSource | None) -> None:
        for use in self.uses():
            use.__dict__["noise_source"] = source

    def owner(self) -> nn.Module:
        """The layer that owns the extra Parameter and the mask: itself unless tied."""
        return self.__dict__.get("_tie_owner", self)  # type: ignore[return-value]

    def freeze_(self) -> None:
        """Stop training the extra Parameter: every use scales its gradient by 0 (it stays in
        the optimiser, so DDP and checkpoints see the same parameters as before)."""
        for use in self.uses():
            use.__dict__["grad_scale"] = 0.0

    def uses(self) -> tuple[nn.Module, ...]:
        """This layer and, for an owner, the layers tied to it (the other uses of its weight)."""
        return (self, *self.__dict__.get("_tied_uses", ()))  # type: ignore[return-value]

    def tie_(self, owner: nn.Module) -> None:
        """Make this layer, which holds ``owner``'s weight, use its extra Parameter (the same
        object, so one optimiser state and one value) and settings."""
        self.register_parameter(self.extra_name, getattr(owner, self.extra_name))  # type: ignore[attr-defined]
        for key in self._SETTINGS:
            self.__dict__[key] = owner.__dict__[key]
        self.__dict__["_tie_owner"] = owner
        owner.__dict__.setdefault("_tied_uses", []).append(self)
        self.__dict__["noise_source"] = owner.noise_source  # type: ignore[attr-defined]

    def workspace(self) -> Workspace:
        """Buffers the fused training pass reuses across steps (not pickled or copied)."""
        found = self.__dict__.get("_workspace")
        if found is None:
            found = self.__dict__["_workspace"] = Workspace()
        return found

    def regulariser(self) -> torch.Tensor:
        """This weight's regulariser: the term the last training forward of any of its uses
        computed (every use computes it in its training forward; one is kept and the others
        dropped, so a weight used three times is counted once), else computed now. Zero on a
        tied use: its owner counts the weight."""
        if self.owner() is not self:
            return self.weight.new_zeros(())
        pending = [use.__dict__.pop("_pending_regulariser", None) for use in self.uses()]
        found = next((term for term in pending if term is not None), None)
        return found if found is not None else self._regulariser_now()

    def _regulariser_now(self) -> torch.Tensor:
        raise NotImplementedError

    def _mask(self) -> torch.Tensor | None:
        return getattr(self.owner(), MASK_BUFFER, None)

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
    extra_name = VD_PARAMETER
    _SETTINGS = ("grad_scale", "vd_threshold")

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

    def _regulariser_now(self) -> torch.Tensor:
        """Sum of the per-weight KL approximation (clipped log_alpha)."""
        return vd_math.kl_sum(self.weight, self._log_sigma2())

    @torch.no_grad()
    def eval_keep(self) -> torch.Tensor:
        """Weights kept at evaluation: log_alpha < threshold, and not already masked."""
        keep = vd_math.keep_mask(self.weight, self.log_sigma2, self.vd_threshold)
        mask = self._mask()
        return keep & mask if mask is not None else keep

    def prune_score(self) -> torch.Tensor:
        """-log_alpha (unclipped): among kept weights the highest log_alpha go first, as a lower
        threshold would take them."""
        return -vd_math.log_alpha(self.weight.detach(), self.log_sigma2.detach(), clip=False)

    def regrow_score(self) -> torch.Tensor:
        """-log_alpha: among pruned weights the lowest log_alpha come back first."""
        return self.prune_score()

    @torch.no_grad()
    def fold_(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The evaluation weight is theta masked (the caller sets the mask): nothing to fold,
        unless ``keep`` (a ranking's choice) overrides the rule; then log_sigma2 moves one unit
        past the threshold where the rule disagrees, so the rule gives ``keep`` at every use of
        the weight. Returns the keep mask."""
        if keep is None:
            return self.eval_keep()
        edge = torch.log(self.weight * self.weight + vd_math.EPSILON) + self.vd_threshold
        self.log_sigma2.copy_(
            torch.where(
                keep, self.log_sigma2.clamp(max=edge - 1.0), self.log_sigma2.clamp(min=edge + 1.0)
            )
        )
        return keep

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
    extra_name = L0_PARAMETER

    def reparameterise_(self, grad_scale: float = 1.0) -> None:
        self.register_parameter(  # type: ignore[attr-defined]
            L0_PARAMETER, nn.Parameter(l0_math.init_log_alpha(self.weight.detach()))
        )
        self.grad_scale = float(grad_scale)

    def _log_alpha(self) -> torch.Tensor:
        return scale_gradient(self.log_alpha, self.grad_scale)

    def _regulariser_now(self) -> torch.Tensor:
        """Expected number of non-zero gates."""
        return l0_math.expected_l0(self._log_alpha())

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

    def prune_score(self) -> torch.Tensor:
        """|theta * z|, the evaluation weight: among open gates the smallest go first (log_alpha
        itself says nothing there: every gate above log_alpha ~ 2.4 is exactly 1)."""
        return (self.weight.detach() * l0_math.eval_gate(self.log_alpha.detach())).abs()

    def regrow_score(self) -> torch.Tensor:
        """log_alpha: among closed gates the nearest to opening come back first."""
        return self.log_alpha.detach().clone()

    @torch.no_grad()
    def fold_(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Fold the evaluation gate into theta and saturate log_alpha (gate exactly 1 where kept,
        0 where pruned), so the plain weight alone gives the evaluation output; returns the keep
        mask. Idempotent. ``keep`` (a ranking's choice) overrides the rule: a weight it keeps
        whose evaluation gate is 0 is folded with its gate's probability of being non-zero,
        sigmoid(log_alpha - PENALTY_SHIFT), instead."""
        if keep is None:
            keep = self.eval_keep()
        gate = l0_math.eval_gate(self.log_alpha)
        open_chance = torch.sigmoid(self.log_alpha - l0_math.PENALTY_SHIFT)
        self.weight.mul_(torch.where(gate > 0, gate, open_chance)).mul_(keep)
        self.log_alpha.copy_(
            torch.where(keep, l0_math.LOG_ALPHA_ON, l0_math.LOG_ALPHA_OFF).to(self.log_alpha)
        )
        return keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._plain_forward(x, self.weight * self.gate())
        if isinstance(self, nn.Embedding):
            return self._gated_lookup(x)
        weight, penalty = l0_math.gated_weight_and_penalty(
            self.weight,
            self.log_alpha,
            source=self.noise_source,
            workspace=self.workspace(),
            grad_scale=self.grad_scale,
        )
        self._pending_regulariser = penalty
        return self._plain_forward(x, weight)

    def _gated_lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Training lookup: gather theta and log_alpha, then one gate per looked-up entry, as
        the reference's ``embedding_lookup_train`` (every occurrence of a token draws its own)."""
        log_alpha = self._log_alpha()
        self._pending_regulariser = l0_math.expected_l0(log_alpha)
        rows = _embedding(self, idx, self.weight)  # type: ignore[arg-type]
        return l0_math.gated_rows(rows, _embedding(self, idx, log_alpha), self.noise_source)  # type: ignore[arg-type]


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


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The weight shape a Linear / Conv / Embedding of this size has (what its forward needs)."""
    if isinstance(module, nn.Embedding):
        return (module.num_embeddings, module.embedding_dim)
    if isinstance(module, nn.Linear):
        return (module.out_features, module.in_features)
    conv: Any = module
    return (conv.out_channels, conv.in_channels // conv.groups, *conv.kernel_size)


def _check_owner(
    name: str, module: nn.Module, attr: str, classes: Mapping[type[nn.Module], type[nn.Module]]
) -> None:
    """The selected parameter itself: the weight of a plain Linear / Conv1d / Conv2d /
    Embedding (without max_norm or sparse gradients)."""
    if type(module) in classes.values():
        return
    if attr != "weight" or type(module) not in classes:
        allowed = ", ".join(c.__name__ for c in classes)
        raise ConfigError(
            f"cannot reparameterise '{name}' ({type(module).__name__}.{attr}); "
            f"allowed: the weight of {allowed} "
            f"(exclude it, e.g. method.selection.exclude=['{name}'])"
        )
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.sparse):
        raise ConfigError(f"'{name}': embeddings with max_norm or sparse gradients are not allowed")


def _check_use(
    name: str,
    use: str,
    module: nn.Module,
    attr: str,
    classes: Mapping[type[nn.Module], type[nn.Module]],
) -> None:
    """Module ``use``, which holds the selected parameter ``name`` as ``attr``: a layer the
    reparameterised classes cover, whose forward takes a weight of the parameter's shape."""
    kinds = [c.__name__ for c in classes]
    allowed = f"{', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else kinds[0]
    hint = f"(exclude it, e.g. method.selection.exclude=['{name}'])"
    plain = next((k for k, v in classes.items() if v is type(module)), type(module))
    if attr != "weight" or plain not in classes:
        raise ConfigError(
            f"cannot reparameterise '{name}': '{use}' ({type(module).__name__}.{attr}) uses the "
            f"same tensor; every use of a shared weight must be the weight of a {allowed} {hint}"
        )
    actual, needed = tuple(getattr(module, attr).shape), _weight_shape(module)
    if actual != needed:
        raise ConfigError(
            f"cannot reparameterise '{name}': '{use}' ({plain.__name__}) uses it as its weight, "
            f"which has shape {needed} in a {plain.__name__}, not {actual} {hint}"
        )
    if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.sparse):
        raise ConfigError(
            f"cannot reparameterise '{name}': '{use}' is an embedding with max_norm or sparse "
            f"gradients, which is not allowed {hint}"
        )


def shared_uses(
    model: nn.Module, name: str, classes: Mapping[type[nn.Module], type[nn.Module]]
) -> list[nn.Module]:
    """The other modules of ``model`` holding parameter ``name`` (the same Parameter object: a
    tied embedding / softmax), in registration order; ConfigError (one line, naming the
    parameter and what is allowed) if one is not a layer the reparameterised classes cover or
    its forward takes a weight of another shape (e.g. a Conv1d holding a Linear's weight)."""
    module_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(module_name)
    param = getattr(owner, attr)
    found = []
    for use_name, module in model.named_modules():
        holds = [a for a, p in module._parameters.items() if p is param]
        for held in holds:
            if module is owner and held == attr:
                continue
            _check_use(name, use_name, module, held, classes)
            found.append(module)
    return found


def reparameterise(
    model: nn.Module, name: str, classes: Mapping[type[nn.Module], type[nn.Module]], **init: Any
) -> nn.Module:
    """Turn the layer owning parameter ``name`` into its reparameterised class (idempotent), and
    every other module holding the same Parameter into a reparameterised layer tied to it (one
    extra Parameter for all of them; see the module docstring). Returns the owner.

    Only ``weight`` of a plain Linear / Conv1d / Conv2d / Embedding can be reparameterised, and
    a shared one only if every use is such a weight of its shape; any other selection is a
    ConfigError naming the parameter and what is allowed, raised before any module changes.
    """
    module_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(module_name)
    _check_owner(name, owner, attr, classes)
    others = shared_uses(model, name, classes)
    if type(owner) not in classes.values():
        owner.__class__ = classes[type(owner)]
        owner.reparameterise_(**init)  # type: ignore[attr-defined]
    for use in others:
        if type(use) not in classes.values():
            use.__class__ = classes[type(use)]
            use.tie_(owner)  # type: ignore[attr-defined]
    return owner


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
