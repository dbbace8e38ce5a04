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
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Molchanov et al. (2017), eq. 14:
#   -KL ~= K1 * sigmoid(K2 + K3 * log_alpha) - 0.5 * log1p(1 / alpha) - K1
K1 = 0.63576
K2 = 1.87320
K3 = 1.48695
LOG_ALPHA_CLIP = 8.0  # reference code: log_alpha clipped to [-8, 8] in training
EPSILON = 1e-8  # reference code's `common.EPSILON`: in log(theta^2 + eps) and in the sqrt
LOG_SIGMA2_INIT = -10.0  # reference: -10 (Transformer), -15 (ResNet-50)
THRESHOLD = 3.0  # Molchanov et al.: weights with log_alpha > 3 are dropped; ResNet-50 used 0.5


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
    mean: torch.Tensor, variance: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Local reparameterisation: mean + sqrt(variance + EPSILON) * noise, noise ~ N(0, 1) per
    output unit unless given (tests pass zeros or ones). ``variance`` is consumed (in place)."""
    if noise is None:
        noise = torch.randn_like(mean)
    return torch.addcmul(mean, variance.add_(EPSILON).sqrt_(), noise)


def train_output(
    op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    x: torch.Tensor,
    theta: torch.Tensor,
    sigma2: torch.Tensor,
    bias: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training output of a linear ``op(input, weight, bias)`` (matmul or convolution) under the
    local reparameterisation trick: op(x, theta, b) + sqrt(op(x^2, sigma^2) + eps) * N(0, 1)."""
    mean = op(x, theta, bias)
    variance = op(x * x, sigma2, None)
    return sample_output(mean, variance, noise)


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


def _kl_slope(log_alpha: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """d KL / d log_alpha = -(K1 * K3 * s * (1 - s) + 0.5 * sigmoid(-log_alpha)),
    s = sigmoid(K2 + K3 * log_alpha); one fresh tensor, sigmoid(-x) taken as 1 - sigmoid(x)."""
    slope = torch.sigmoid(log_alpha).mul_(0.5).sub_(0.5)  # -0.5 * sigmoid(-log_alpha)
    return slope.addcmul_(s, s, value=K1 * K3).sub_(s, alpha=K1 * K3)


class _VariationalTerms(torch.autograd.Function):
    """sigma^2 and sum KL of one weight tensor in one pass over it (same values and gradients as
    ``clipped_sigma2`` and ``kl_sum``, which autograd would run as ~20 separate kernels and
    temporaries). With la = clip(log_sigma2 - log t, -8, 8), t = theta^2 + EPSILON and ``inside``
    where the clip is inactive:
        sigma^2 = exp(la) * t;  d sigma^2 / d log_sigma2 = sigma^2 * inside,
        d sigma^2 / d theta = sigma^2 * 2 theta / t * (1 - inside);
        d KL / d log_sigma2 = KL'(la) * inside,  d KL / d theta = -KL'(la) * 2 theta / t * inside.
    log1p(exp(-la)) is summed as -log(sigmoid(la)) (exact for the clipped range, and several
    times faster than softplus on the CPU).
    """

    @staticmethod
    def forward(ctx, theta, log_sigma2):  # type: ignore[override]
        t = torch.mul(theta, theta).add_(EPSILON)
        la = torch.log(t)
        torch.sub(log_sigma2, la, out=la).clamp_(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)
        sigma2 = torch.exp(la).mul_(t)
        s = torch.mul(la, K3).add_(K2).sigmoid_()
        log1p_exp = torch.sigmoid(la).log_().sum().neg()
        kl = K1 * la.numel() - K1 * s.sum() + 0.5 * log1p_exp
        ctx.save_for_backward(theta, t, la, sigma2, s)
        return sigma2, kl

    @staticmethod
    def backward(ctx, grad_sigma2, grad_kl):  # type: ignore[override]
        theta, t, la, sigma2, s = ctx.saved_tensors
        inside = la.abs() < LOG_ALPHA_CLIP
        from_var = grad_sigma2 * sigma2 if grad_sigma2 is not None else torch.zeros_like(sigma2)
        from_kl = _kl_slope(la, s).mul_(grad_kl)
        grad_log_sigma2 = torch.add(from_var, from_kl).mul_(inside)
        # d/d theta = -2 theta / t * (inside ? from_kl : -from_var)
        grad_theta = torch.where(inside, from_kl, from_var.neg_()).mul_(theta).div_(t).mul_(-2.0)
        return grad_theta, grad_log_sigma2


def variance_and_kl(
    theta: torch.Tensor, log_sigma2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(clipped sigma^2, sum KL) of one weight tensor, fused (see ``_VariationalTerms``)."""
    return _VariationalTerms.apply(theta, log_sigma2)
