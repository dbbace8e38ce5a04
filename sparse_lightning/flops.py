"""FLOPs of a sparse model: one forward pass, counted on a real batch, and a whole training run.

Convention: RigL's (Evci et al. 2020, "Rigging the Lottery", appendix on counting FLOPs; code in
google-research/rigl). Its ``rigl/sparse_utils.py: get_stats`` counts, per masked layer, the ops
of ``micronet_challenge/counting.py: count_ops`` (google-research/google-research) with that
layer's sparsity, and adds them up (``total_flops += n_mults + n_adds``); for a dense layer
``count_ops`` has ``n_elements = c_in * (1 - sparsity)``, ``flop_mults += n_elements * c_out``,
``flop_adds += (n_elements - 1) * c_out`` (conv: ``vector_length = k * k * c_in * (1 -
sparsity)`` per output element). So a layer costs 2 x (its multiply-adds) x (its density), and
activations stay dense. Here the multiply-adds come from ``torch.utils.flop_counter`` (the
``flop_registry`` of ``FlopCounterMode``: 2 FLOPs per multiply-add of mm, addmm, bmm,
convolution, attention) on the model's real forward pass:

    f_D = sum over ops of F_op,   f_S = sum over ops of F_op x d_w(op)

where d_w(op) is the density (kept fraction) of the masked weight the op multiplies by, and 1
for ops with no masked weight (attention scores, layers left dense). Not counted (unlike
micronet): bias adds, activations, norms, the -1 per dot product, the mask multiply itself.

Training, per example and step (RigL's appendix): the backward pass costs twice the forward (the
gradient of the activations and that of the weights), so a dense step costs 3 f_D and a sparse
one 3 f_S(t), with f_S(t) the masks' densities at step t. RigL's update steps need the dense
weight gradient: 2 f_S + f_D; with one update every Delta T steps that averages to
(3 f_S (Delta T - 1) + 2 f_S + f_D) / Delta T (the appendix writes it for Delta T sparse steps
between updates, (3 f_S Delta T + 2 f_S + f_D) / (Delta T + 1)). Gradual pruning (magnitude,
random, SNIP) is f_S(t) summed over the steps as its masks change, as RigL's
``imagenet_resnet/colabs/Resnet_50_Param_Flops_Counting.ipynb`` ("Pruning FLOPs": ``get_stats``
averaged over the schedule's sparsity, sampled every 1000 steps) does, here at every step.
SNIP's score |w g| needs the gradient of the live weights only, so it is a sparse step.

Attribution is by identity, not by name: a module holding a masked weight as its own Parameter
(``is``) is a use of it; a tied weight (the Transformer's ``model.shared.weight``: encoder and
decoder lookups, and the output projection ``lm_head``) has several uses. Inside a use the ops
it runs are ignored and its plain op (``F.linear`` / conv / a lookup, which costs nothing) is
counted on meta tensors of its real input's shape: so a VD / l0 layer (``layers/
reparameterise.py``) counts as the plain layer (dense-equivalent), never its variance matmul or
gates, whichever backend ran it (the fused C kernels have no aten ops to see). An op outside any
use (a weight used functionally) is attributed if one of its arguments shares the weight's
storage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

aten = torch.ops.aten

# CPU scaled-dot-product attention without a mask runs one fused op that the registry lacks; its
# arguments begin as those of the CUDA flash kernel, whose formula counts it.
REGISTRY: dict[Any, Callable[..., int]] = {
    **flop_registry,
    aten._scaled_dot_product_flash_attention_for_cpu: flop_registry[
        aten._scaled_dot_product_flash_attention
    ],
}
BACKWARD_FACTOR = 2  # RigL: the backward pass costs twice the forward (activations + weights)


@dataclass(frozen=True)
class ForwardFlops:
    """Dense FLOPs of one forward pass, per example: ``weights`` those of the ops that multiply
    by each masked weight (by name), ``other`` those of every other counted op."""

    weights: dict[str, float] = field(default_factory=dict)
    other: float = 0.0

    def dense(self) -> float:
        """f_D."""
        return sum(self.weights.values()) + self.other

    def sparse(self, densities: Mapping[str, float]) -> float:
        """f_S: each weight's FLOPs times its density (a weight not in ``densities`` is dense)."""
        return sum(f * densities.get(n, 1.0) for n, f in self.weights.items()) + self.other

    def to_json(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "other": self.other}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ForwardFlops:
        return cls({str(k): float(v) for k, v in data["weights"].items()}, float(data["other"]))


def _storage(tensor: torch.Tensor) -> int:
    """The address of ``tensor``'s storage (shared by its views), 0 if it has none."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # meta tensors, tensor subclasses
        return 0


def plain_op_flops(module: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``module``'s plain op (no bias: the registry counts addmm as its mm) on an input
    of ``x``'s shape, counted by FlopCounterMode on meta tensors; 0 for a lookup."""
    if isinstance(module, nn.Embedding):
        return 0
    meta_x = torch.empty(x.shape, device="meta")
    meta_w = torch.empty(module.weight.shape, device="meta")
    with FlopCounterMode(display=False) as counter:
        if isinstance(module, nn.Linear):
            F.linear(meta_x, meta_w)
        else:
            module._conv_forward(meta_x, meta_w, None)  # type: ignore[operator]
    return counter.get_total_flops()


def _counts_as_use(module: nn.Module) -> bool:
    """Module kinds whose plain op ``plain_op_flops`` replays (VD / l0 layers are subclasses)."""
    conv = isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
    return conv or isinstance(module, (nn.Linear, nn.Embedding))


class ForwardCounter(TorchDispatchMode):
    """Counts the forward pass run while it is entered (see the module docstring).

    ``model`` holds the weights; ``weights`` maps each masked weight's name to its Parameter.
    Enter and exit it around one forward pass (``with``, or ``start()`` / ``stop()`` from two
    hooks), then ``result(examples)``.
    """

    def __init__(self, model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.weights = dict(weights)
        self.flops: dict[str, float] = {name: 0.0 for name in self.weights}
        self.other = 0.0
        self._storages = {_storage(w): n for n, w in self.weights.items() if _storage(w)}
        self._inside = 0  # >0 while a use's own forward runs: its ops are counted by replay
        self._uses: list[tuple[str, nn.Module, torch.Tensor]] = []
        self._handles: list[Any] = []

    def _hook_uses(self) -> None:
        by_id = {id(w): n for n, w in self.weights.items()}
        for module in self.model.modules():
            name = next((by_id[id(p)] for p in module._parameters.values() if id(p) in by_id), None)
            if name is None or not _counts_as_use(module):
                continue
            self._handles.append(
                module.register_forward_pre_hook(self._enter_use(name), with_kwargs=True)
            )
            self._handles.append(module.register_forward_hook(self._exit_use))

    def _enter_use(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs = [*args, *kwargs.values()]
            if self._inside == 0 and inputs and isinstance(inputs[0], torch.Tensor):
                self._uses.append((name, module, inputs[0]))
            self._inside += 1

        return hook

    def _exit_use(self, module: nn.Module, args: Any, output: Any) -> None:
        self._inside -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if self._inside == 0 and packet in REGISTRY:
            flops = REGISTRY[packet](*args, **kwargs, out_val=out)
            tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            found = (self._storages.get(_storage(t)) for t in tensors)
            owner = next((name for name in found if name is not None), None)
            if owner is None:
                self.other += flops
            else:
                self.flops[owner] += flops
        return out

    def start(self) -> ForwardCounter:
        self._hook_uses()
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name, module, x in self._uses:  # replayed after the pass, outside this mode
            self.flops[name] += plain_op_flops(module, x)
        self._uses.clear()

    def result(self, examples: int) -> ForwardFlops:
        """The counts per example of a pass over ``examples`` examples."""
        return ForwardFlops({n: f / examples for n, f in self.flops.items()}, self.other / examples)


def count_forward(
    model: nn.Module,
    weights: Mapping[str, torch.Tensor],
    forward: Callable[[], Any],
    examples: int,
) -> ForwardFlops:
    """FLOPs per example of ``forward()`` (a pass of ``model`` over ``examples`` examples)."""
    counter = ForwardCounter(model, weights)
    counter.start()
    try:
        forward()
    finally:
        counter.stop()
    return counter.result(examples)


def batch_examples(batch: Any) -> int:
    """Examples in a batch: the leading dimension of its first tensor (images, sequences,
    sentence pairs)."""
    for leaf in tree_flatten(batch)[0]:
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    raise ValueError("the batch holds no tensor with a batch dimension")


MaskHistory = Sequence[tuple[int, Mapping[str, float]]]


def training_flops(
    forward: ForwardFlops,
    history: MaskHistory,
    steps: int,
    dense_gradient_steps: Iterable[int] = (),
) -> tuple[float, float]:
    """(dense, sparse) training FLOPs per example of steps ``history[0][0] + 1`` to ``steps``.

    ``history`` is [(s, densities after step s)], in step order, starting where training
    started (s = 0, or the step resumed from); optimiser step t runs with the masks of the last
    s < t. A step costs 3 f_S(t), a step in ``dense_gradient_steps`` (RigL's updates: the step
    whose gradient chooses the new weights) 2 f_S(t) + f_D; the dense run 3 f_D every step.
    """
    f_dense = forward.dense()
    factor = 1 + BACKWARD_FACTOR
    first = history[0][0]
    ends = [s for s, _ in history[1:]] + [steps]
    costs = [forward.sparse(d) for _, d in history]
    sparse = sum(
        factor * f_s * max(0, min(end, steps) - start)
        for (start, _), end, f_s in zip(history, ends, costs)
    )
    for t in set(dense_gradient_steps):
        if first < t <= steps:
            segment = next(i for i, end in enumerate(ends) if t <= end)
            sparse += f_dense - costs[segment]  # 2 f_S + f_D instead of 3 f_S
    return factor * f_dense * max(0, steps - first), sparse
