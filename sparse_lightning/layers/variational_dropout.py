"""Sparse variational dropout: the math (Molchanov, Ashukha, Vetrov 2017, "Variational Dropout
Sparsifies Deep Neural Networks", arXiv:1701.05369), as used by Gale et al. (2019).

Each weight is a Gaussian N(theta, sigma^2); ``alpha = sigma^2 / theta^2`` is its dropout rate:

    log_alpha = log_sigma2 - log(theta^2 + EPSILON),  clipped to [-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP].

Training uses the local reparameterisation trick (Kingma, Salimans, Welling 2015): for a linear
map or convolution the pre-activation is Gaussian, so one sample per output unit replaces one
sample per weight:

    out = x * theta + sqrt(x^2 * sigma^2 + EPSILON) * N(0, 1),

where ``*`` is the matmul / convolution and sigma^2 is recomputed from the clipped log_alpha
(``sigma^2 = exp(log_alpha) * (theta^2 + EPSILON)``), exactly as the reference TensorFlow code
(google-research state_of_sparsity, ``layers/variational_dropout``) does. Evaluation is
deterministic: theta where log_alpha < threshold, zero elsewhere.

Under autocast (bf16-mixed) everything but the mean matmul runs in float32: sigma^2 and the KL,
the variance matmul, the square root and the noise (see ``precision.py``), so the output is
float32.

The code below is the PyTorch path (the ``torch`` backend). Under the ``native`` backend
(``backends/``, chosen once per run) ``variance_and_kl`` and ``sample_output`` hand CPU float32
tensors to fused C kernels that compute the same formulas and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sparse_lightning.layers import backends
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.layers.precision import full_precision, widened
from sparse_lightning.layers.workspace import Workspace, claim

# Molchanov et al. (2017), eq. 14:
#   -KL ~= K1 * sigmoid(K2 + K3 * log_alpha) - 0.5 * log1p(1 / alpha) - K1
K1 = 0.63576
K2 = 1.87320
K3 = 1.48695
LOG_ALPHA_CLIP = 8.0  # reference code: log_alpha clipped to [-8, 8] in training
EPSILON = 1e-8  # reference code's `common.EPSILON`: in log(theta^2 + eps) and in the sqrt
LOG_SIGMA2_INIT = -10.0  # reference: -10 (Transformer), -15 (ResNet-50)
LOG2_E = math.log2(math.e)  # exp(x) = exp2(x * LOG2_E)
THRESHOLD = 3.0  # Molchanov et al.: weights with log_alpha > 3 are dropped; ResNet-50 used 0.5
KL_LOG_GROUP = 8  # the KL's value-only log(1 + alpha) is taken once per this many (``sum_log``)


def log_alpha(theta: torch.Tensor, log_sigma2: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """log_alpha = log_sigma2 - log(theta^2 + EPSILON), clipped to +-LOG_ALPHA_CLIP if ``clip``."""
    value = log_sigma2 - torch.log(theta * theta + EPSILON)
    return value.clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP) if clip else value


def negative_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Per-weight -KL(q || log-uniform prior), Molchanov et al. (2017) eq. 14:
    K1 * sigmoid(K2 + K3 * log_alpha) - 0.5 * log1p(exp(-log_alpha)) - K1."""
    return (
        K1 * torch.sigmoid(K2 + K3 * log_alpha)
        - 0.5 * torch.nn.functional.softplus(-log_alpha)
        - K1
    )


def clipped_sigma2(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """sigma^2 implied by the clipped log_alpha: exp(clip(log_alpha)) * (theta^2 + EPSILON)."""
    return torch.exp(log_alpha(theta, log_sigma2)) * (theta * theta + EPSILON)


def kl_sum(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """Sum over weights of KL(q(w | theta, alpha) || log-uniform), with the clipped log_alpha."""
    return -negative_kl(log_alpha(theta, log_sigma2)).sum()


def sample_output(
    mean: torch.Tensor,
    variance: torch.Tensor,
    noise: torch.Tensor | None = None,
    source: NoiseSource | None = None,
) -> torch.Tensor:
    """Local reparameterisation: mean + sqrt(variance + EPSILON) * noise, noise ~ N(0, 1) per
    output unit: ``noise`` if given (tests pass zeros or ones), else drawn from ``source`` (else
    the global generator). ``mean`` and ``variance`` are consumed (computed in place: neither op
    that made them keeps its output for backward), and so is a given ``noise`` on the CPU.
    Where the backend is ``native`` (``backends.fused``) this is one fused pass, whose noise from
    ``source`` is drawn inside it.
    Computed in float32 whatever autocast is on: at log_sigma2 = -15 the noise is below
    bfloat16's resolution of the mean (a bfloat16 ``mean`` is copied to float32 first)."""
    with full_precision(mean.device.type):
        mean, variance = widened(mean), widened(variance)
        noise = widened(noise) if noise is not None else None
        kernels = backends.fused(mean, variance, *([] if noise is None else [noise]))
        if kernels is not None:
            return kernels.sample_output(mean, variance, noise, source)
        if noise is None:
            noise = source.normal_like(mean) if source is not None else torch.randn_like(mean)
        return mean.addcmul_(variance.add_(EPSILON).sqrt_(), noise)


def output_moments(
    op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    theta: torch.Tensor,
    sigma2: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of a linear ``op(input, weight, bias)`` (matmul or convolution) of x
    under independent Gaussian weights: op(x, theta, b) and op(x^2, sigma^2), both returned in
    float32 (or float64). The mean runs as every layer's matmul does (bfloat16 under autocast,
    then copied to float32); the variance in float32 with autocast off (see ``precision.py``)."""
    mean = op(x, theta, bias)
    with full_precision(x.device.type):
        x = widened(x)
        variance = op(x * x, widened(sigma2), None)
    return widened(mean), variance


def train_output(
    op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    theta: torch.Tensor,
    sigma2: torch.Tensor,
    bias: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training output under the local reparameterisation trick:
    op(x, theta, b) + sqrt(op(x^2, sigma^2) + eps) * N(0, 1)."""
    return sample_output(*output_moments(op, x, theta, sigma2, bias), noise)


def train_forward(
    op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    theta: torch.Tensor,
    log_sigma2: torch.Tensor,
    bias: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """``train_output`` with sigma^2 from the clipped log_alpha."""
    return train_output(op, x, theta, clipped_sigma2(theta, log_sigma2), bias, noise)


@torch.no_grad()
def keep_mask(theta: torch.Tensor, log_sigma2: torch.Tensor, threshold: float) -> torch.Tensor:
    """Evaluation mask: True (kept) where log_alpha < threshold (unclipped; clipping to +-8 does
    not change the comparison for thresholds inside the clip range)."""
    return log_alpha(theta, log_sigma2, clip=False) < threshold


def eval_weight(
    theta: torch.Tensor, log_sigma2: torch.Tensor, threshold: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Deterministic weight for evaluation and export: theta where log_alpha < threshold."""
    keep = keep_mask(theta, log_sigma2, threshold)
    if mask is not None:
        keep &= mask
    return theta * keep


def sum_log(values: torch.Tensor, group: int = KL_LOG_GROUP) -> torch.Tensor:
    """sum(log(values)) for values in [1, 1 + e^8], as the log of products of ``group`` values:
    a product stays below 3e27 (finite in float32), and a log costs ~10 multiplications, so
    this halves the cost of the KL's one log that only its value (not its gradient) needs."""
    flat = values.reshape(-1)
    whole = flat.numel() - flat.numel() % group
    total = flat[:whole].view(-1, group).prod(dim=1).log_().sum()
    return total + flat[whole:].log().sum() if whole < flat.numel() else total


class _VariationalTerms(torch.autograd.Function):
    """sigma^2 and sum KL of one weight tensor (same values and gradients as ``clipped_sigma2``
    and ``kl_sum``, which autograd would run as ~20 kernels with a temporary each, recomputing
    the transcendentals in backward).

    With t = theta^2 + EPSILON, la = clip(log_sigma2 - log t, -8, 8), alpha = exp(la),
    inside = |la| < 8 and s = sigmoid(K2 + K3 la):
        sigma^2 = alpha t,   KL = K1 - K1 s + 0.5 log1p(1 / alpha)
                                = K1 - K1 s + 0.5 (log(1 + alpha) - la),
        slope = d KL / d la = -(K1 K3 s (1 - s) + 0.5 / (1 + alpha))          (kept),
        g_la = g_sigma2 sigma^2 + g_kl slope,   d/d log_sigma2 = g_la inside,
        d/d theta = (g_sigma2 sigma^2 - g_la inside) 2 theta / t     (c = 2 theta / t, kept).
    So forward runs four transcendentals (log, exp2, sigmoid, log; exp2 is ~3x exp on the CPU,
    softplus and log1p are unvectorised) and backward four arithmetic passes writing only the two
    gradients. -la is kept rather than la (one pass fewer); the clip is symmetric.
    Temporaries and saved tensors come from ``new(name)`` (see ``workspace.claim``);
    ``grad_scale`` multiplies log_sigma2's gradient (its SGD learning-rate multiplier).
    """

    @staticmethod
    def forward(ctx, theta, log_sigma2, new, workspace, grad_scale):  # type: ignore[override]
        t = torch.mul(theta, theta, out=new("t")).add_(EPSILON)
        neg_la = torch.log(t, out=new("neg_la")).sub_(log_sigma2)
        neg_la.clamp_(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
        alpha = torch.mul(neg_la, -LOG2_E, out=new("alpha")).exp2_()
        sigma2 = torch.mul(alpha, t)  # an output: fresh
        s = torch.mul(neg_la, -K3, out=new("s")).add_(K2).sigmoid_()
        sum_s = s.sum()
        one_plus_alpha = alpha.add_(1.0)
        slope = torch.ops.aten.sigmoid_backward.grad_input(
            theta.new_tensor(-K1 * K3).expand_as(s), s, grad_input=s
        )
        slope.sub_(torch.reciprocal(one_plus_alpha, out=new("recip")), alpha=0.5)
        kl = K1 * s.numel() - K1 * sum_s + 0.5 * (sum_log(one_plus_alpha) + neg_la.sum())
        c = torch.div(theta, t, out=t).mul_(2.0)  # 2 theta / (theta^2 + EPSILON)
        ctx.save_for_backward(neg_la, sigma2, slope, c)
        ctx.workspace, ctx.grad_scale = workspace, grad_scale
        return sigma2, kl

    @staticmethod
    def backward(ctx, grad_sigma2, grad_kl):  # type: ignore[override]
        neg_la, sigma2, slope, c = ctx.saved_tensors
        from_var = grad_sigma2 * sigma2 if grad_sigma2 is not None else torch.zeros_like(sigma2)
        if grad_kl is not None:
            grad_la = torch.addcmul(from_var, slope, grad_kl)
        else:
            grad_la = from_var.clone()
        # hardtanh_backward passes the gradient where -8 < -la < 8: exactly "inside the clip"
        grad_log_sigma2 = torch.ops.aten.hardtanh_backward.grad_input(
            grad_la, neg_la, -LOG_ALPHA_CLIP, LOG_ALPHA_CLIP, grad_input=grad_la
        )
        grad_theta = from_var.sub_(grad_log_sigma2).mul_(c)
        if ctx.grad_scale != 1.0:
            grad_log_sigma2.mul_(ctx.grad_scale)
        if ctx.workspace is not None:
            ctx.workspace.release()
        return grad_theta, grad_log_sigma2, None, None, None


def variance_and_kl(
    theta: torch.Tensor,
    log_sigma2: torch.Tensor,
    workspace: Workspace | None = None,
    grad_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clipped sigma^2, sum KL) of one weight tensor, fused (``_VariationalTerms``, or the
    ``native`` backend's one pass each way where ``backends.fused`` hands it), with
    log_sigma2's gradient times ``grad_scale``; temporaries reuse ``workspace`` when free.
    Float32 with autocast off (the weights of bf16-mixed training are float32 already)."""
    with full_precision(theta.device.type):
        theta, log_sigma2 = widened(theta), widened(log_sigma2)
        new, claimed = claim(workspace, theta)
        kernels = backends.fused(theta, log_sigma2)
        if kernels is not None:
            return kernels.variance_and_kl(theta, log_sigma2, new, claimed, float(grad_scale))
        return _VariationalTerms.apply(theta, log_sigma2, new, claimed, float(grad_scale))
