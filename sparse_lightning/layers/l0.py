"""l0 regularisation with hard concrete gates: the math (Louizos, Welling, Kingma 2018,
"Learning Sparse Neural Networks through L0 Regularization", arXiv:1712.01312), as used by
Gale et al. (2019) and their reference TensorFlow code (google-research state_of_sparsity,
``layers/l0_regularization``).

Each weight theta has a gate z in [0, 1] with a learned location log_alpha:

    u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log_alpha) / BETA),
    z = clip(s * (ZETA - GAMMA) + GAMMA, 0, 1),    weight = theta * z          (training)
    z = clip(sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)                (evaluation)
    E[||z||_0] = sum sigmoid(log_alpha - BETA * log(-GAMMA / ZETA))            (penalty)

The stretch to (GAMMA, ZETA) followed by the clip puts finite probability mass on exactly 0 and
exactly 1. A weight is pruned where the evaluation gate is 0.

Gates are drawn afresh at every use of a weight, as in the reference: a matmul or convolution
draws one gate per weight entry per call (``nn.matmul_train``), an embedding lookup one per
looked-up entry, i.e. per token occurrence (``nn.embedding_lookup_train`` gathers theta and
log_alpha, then samples). The gate math runs in float32 with autocast off (``precision.py``).

The code below is the PyTorch path (the ``torch`` backend). Under the ``native`` backend
(``backends/``, chosen once per run) ``gated_weight_and_penalty`` hands CPU float32 tensors to a
fused C kernel that computes the same formulas and gradients.
"""

from __future__ import annotations

import math

import torch

from sparse_lightning.layers import backends
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.layers.precision import full_precision, widened
from sparse_lightning.layers.workspace import Workspace, claim

BETA = 2.0 / 3.0  # temperature of the concrete distribution
GAMMA = -0.1  # lower end of the stretch interval
ZETA = 1.1  # upper end of the stretch interval
LOG_ALPHA_INIT_MEAN = math.log(0.9 / 0.1)  # 2.197: keep probability ~0.9 at initialisation
LOG_ALPHA_INIT_STD = 0.01
UNIFORM_EPS = 1e-6  # u is drawn from [UNIFORM_EPS, 1 - UNIFORM_EPS] so that logit(u) is finite
PENALTY_SHIFT = BETA * math.log(-GAMMA / ZETA)
# Gate locations whose evaluation gate is exactly 1 / exactly 0 (|log_alpha| > log(11) suffices);
# used when a trained layer is folded into plain weights (see ``fold``).
LOG_ALPHA_ON = 10.0
LOG_ALPHA_OFF = -10.0


def stretch(s: torch.Tensor) -> torch.Tensor:
    """Hard concrete: clip(s * (ZETA - GAMMA) + GAMMA, 0, 1)."""
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def sample_gate(log_alpha: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
    """A training gate per entry: z = clip(sigmoid((logit(u) + log_alpha) / BETA) * (ZETA - GAMMA)
    + GAMMA, 0, 1), u ~ U(UNIFORM_EPS, 1 - UNIFORM_EPS) unless given."""
    if u is None:
        u = torch.empty_like(log_alpha).uniform_(UNIFORM_EPS, 1.0 - UNIFORM_EPS)
    return stretch(torch.sigmoid((torch.logit(u) + log_alpha) / BETA))


def uniform_(out: torch.Tensor, source: NoiseSource | None = None) -> torch.Tensor:
    """Fill ``out`` with U(UNIFORM_EPS, 1 - UNIFORM_EPS) draws from ``source`` (else the global
    generator), in place."""
    if source is not None:
        return source.uniform_(out, UNIFORM_EPS, 1.0 - UNIFORM_EPS)
    return out.uniform_(UNIFORM_EPS, 1.0 - UNIFORM_EPS)


def gated_rows(
    theta_rows: torch.Tensor, log_alpha_rows: torch.Tensor, source: NoiseSource | None = None
) -> torch.Tensor:
    """theta * z for looked-up embedding entries, one fresh gate per entry (``sample_gate``), in
    float32: the reference's lookup, whose draws scale with the batch, not the vocabulary."""
    with full_precision(theta_rows.device.type):
        log_alpha_rows = widened(log_alpha_rows)
        u = torch.empty_like(log_alpha_rows, memory_format=torch.contiguous_format)
        u = uniform_(u, source)
        return widened(theta_rows) * sample_gate(log_alpha_rows, u)


def eval_gate(log_alpha: torch.Tensor) -> torch.Tensor:
    """Deterministic gate: clip(sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)."""
    return stretch(torch.sigmoid(log_alpha))


def expected_l0(log_alpha: torch.Tensor) -> torch.Tensor:
    """Expected number of non-zero gates: sum sigmoid(log_alpha - BETA * log(-GAMMA / ZETA))."""
    return torch.sigmoid(log_alpha - PENALTY_SHIFT).sum()


def init_log_alpha(like: torch.Tensor) -> torch.Tensor:
    """log_alpha ~ N(LOG_ALPHA_INIT_MEAN, LOG_ALPHA_INIT_STD), as in the reference code."""
    return torch.empty_like(like).normal_(LOG_ALPHA_INIT_MEAN, LOG_ALPHA_INIT_STD)


LOG2_E = math.log2(math.e)
assert BETA == 2.0 / 3.0, "both backends take r^(1/BETA) as r * sqrt(r)"


class _HardConcreteWeight(torch.autograd.Function):
    """theta * z for one sampled gate per entry, and the expected-l0 penalty, in one pass over the
    weight tensor (same values and gradients as ``theta * sample_gate(log_alpha, u)`` and
    ``expected_l0``, which autograd would run as ~15 kernels with a temporary each).

    No logarithm is needed (``logit`` and ``softplus`` are unvectorised on the CPU, ~10x ``exp``):
    with r = (1 - u) / u,
        s = sigmoid((logit(u) + log_alpha) / BETA) = 1 / (1 + r^(3/2) exp(-3/2 log_alpha))
    (BETA = 2/3), which saturates to the right limits when the exponential overflows. With
    z = clip(s (ZETA - GAMMA) + GAMMA, 0, 1) and p = sigmoid(log_alpha - PENALTY_SHIFT):
        d/d theta = g z,
        d/d log_alpha = g theta (ZETA - GAMMA) / BETA * s (1 - s) * [0 < z < 1] + g_pen p (1 - p).
    ``noise`` holds the uniform draws and is overwritten (s is computed in it); temporaries and
    saved tensors come from ``new(name)`` (see ``workspace.claim``); ``grad_scale`` multiplies
    log_alpha's gradient (its SGD learning-rate multiplier).
    """

    @staticmethod
    def forward(ctx, theta, log_alpha, noise, new, workspace, grad_scale):  # type: ignore[override]
        e = torch.mul(log_alpha, -LOG2_E / BETA, out=new("e")).exp2_()  # exp(-log_alpha / BETA)
        r = noise.reciprocal_().sub_(1.0)  # (1 - u) / u
        s = r.mul_(torch.sqrt(r, out=new("z"))).mul_(e).add_(1.0).reciprocal_()
        z = torch.mul(s, ZETA - GAMMA, out=new("z")).add_(GAMMA).clamp_(0.0, 1.0)
        p = torch.sub(log_alpha, PENALTY_SHIFT, out=e).sigmoid_()
        penalty = p.sum()
        p_slope = p.addcmul_(p, p, value=-1.0)  # p (1 - p), in p's storage
        ctx.save_for_backward(theta, s, z, p_slope)
        ctx.workspace, ctx.grad_scale = workspace, grad_scale
        return theta * z, penalty

    @staticmethod
    def backward(ctx, grad_weight, grad_penalty):  # type: ignore[override]
        theta, s, z, p_slope = ctx.saved_tensors
        grad_theta = grad_log_alpha = None
        if grad_weight is not None:
            grad_theta = grad_weight * z
            grad_log_alpha = torch.mul(grad_weight, theta)  # * s (1 - s) * [0 < z < 1], in place
            torch.ops.aten.sigmoid_backward.grad_input(grad_log_alpha, s, grad_input=grad_log_alpha)
            torch.ops.aten.hardtanh_backward.grad_input(
                grad_log_alpha, z, 0.0, 1.0, grad_input=grad_log_alpha
            )
            grad_log_alpha.mul_((ZETA - GAMMA) / BETA)
        if grad_penalty is not None:
            if grad_log_alpha is None:
                grad_log_alpha = p_slope * grad_penalty
            else:
                grad_log_alpha.addcmul_(p_slope, grad_penalty)
        if grad_log_alpha is not None and ctx.grad_scale != 1.0:
            grad_log_alpha.mul_(ctx.grad_scale)
        if ctx.workspace is not None:
            ctx.workspace.release()
        return grad_theta, grad_log_alpha, None, None, None, None


def gated_weight_and_penalty(
    theta: torch.Tensor,
    log_alpha: torch.Tensor,
    noise: torch.Tensor | None = None,
    source: NoiseSource | None = None,
    workspace: Workspace | None = None,
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta * sampled gate, expected l0), fused (see ``_HardConcreteWeight``), with log_alpha's
    gradient times ``grad_scale``. The uniform draws, from ``source`` if given (else the global
    generator), go into ``noise``, which is overwritten (``workspace``'s if None); temporaries
    reuse ``workspace`` when it is free. The ``native`` backend (``backends.fused``) runs this as
    one pass each way. Float32 with autocast off (the weights of bf16-mixed training are float32
    already)."""
    with full_precision(theta.device.type):
        theta, log_alpha = widened(theta), widened(log_alpha)
        new, claimed = claim(workspace, log_alpha)
        noise = uniform_(new("noise") if noise is None else noise, source)
        kernels = backends.fused(theta, log_alpha, noise)
        if kernels is not None:
            return kernels.gated_weight_and_penalty(
                theta, log_alpha, noise, claimed, float(grad_scale)
            )
        return _HardConcreteWeight.apply(theta, log_alpha, noise, new, claimed, float(grad_scale))
