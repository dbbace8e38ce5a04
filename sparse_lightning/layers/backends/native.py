"""The ``native`` backend: the VD and l0 passes and their random numbers as the fused CPU loops of
``kernels.c`` (built by ``build.py``), run over blocks of the tensor on PyTorch's OpenMP threads.

Each function here computes what the same-named function of ``variational_dropout.py`` /
``l0.py`` / ``noise.py`` computes with PyTorch ops (the formulas and gradients are written
there); the math modules call these only where ``backends.fused`` hands them this module
(CPU, float32, contiguous tensors, the library built). ``torch.compile`` was measured on the
same passes and was slower than eager PyTorch on the CPU.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, Protocol

import torch

from sparse_lightning.layers.backends import build
from sparse_lightning.layers.threads import pool


class PhiloxStreams(Protocol):
    """What the kernels need of a noise source (``noise.NoiseSource``)."""

    def take_philox_counters(self, count: int) -> tuple[int, int, int]: ...


def library() -> ctypes.CDLL:
    lib = build.library()
    if lib is None:
        raise RuntimeError("the native backend runs only where build.library() is built")
    return lib


def run_blocks(kernel: Callable[[ctypes.c_void_p], None], numel: int) -> None:
    """Run ``kernel(next_block)`` over the blocks of ``numel`` elements. Built with OpenMP, the
    kernel's own parallel region (PyTorch's threads) takes the blocks. Otherwise
    ``torch.get_num_threads()`` threads (the caller is one) take them from the shared counter,
    and a pool worker that has not started when the caller runs out of blocks is cancelled: a
    thread the OS runs late (e.g. behind an OpenMP thread still spinning after a PyTorch op)
    costs nothing but the blocks it did not take."""
    counter = ctypes.c_int64(0)
    next_block = ctypes.cast(ctypes.byref(counter), ctypes.c_void_p)
    if library().kernels_use_openmp():
        kernel(next_block)  # its parallel region uses PyTorch's threads
        return
    helpers = min(torch.get_num_threads(), -(-numel // build.BLOCK)) - 1
    futures = [pool().submit(kernel, next_block) for _ in range(helpers)]
    kernel(next_block)
    for future in futures:
        if not future.cancel():
            future.result()


def run_summed(kernel: Callable[..., None], numel: int, *args: Any) -> torch.Tensor:
    """Run ``kernel(*args, next_block, partials)``, which writes one partial sum per block, over
    ``numel`` elements; the total (float64, the same whichever threads ran which block)."""
    partials = torch.empty(-(-numel // build.BLOCK), dtype=torch.float64)
    run_blocks(lambda next_block: kernel(*args, next_block, partials.data_ptr()), numel)
    return partials.sum()


def incoming(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A backward's incoming gradient as the kernels read it: contiguous, zeros if None."""
    return torch.zeros_like(like) if grad is None else grad.contiguous()


def philox_counters(source: PhiloxStreams, numel: int) -> tuple[int, int, int]:
    """(key0, key1, first counter) of a draw of ``numel`` numbers: ceil(numel / (4 lanes))
    chunks of PHILOX_LANES counters, four numbers per counter (see kernels.c)."""
    chunks = -(-numel // (4 * build.PHILOX_LANES))
    return source.take_philox_counters(chunks * build.PHILOX_LANES)


# ---- random numbers ------------------------------------------------------------------------


def uniform_(out: torch.Tensor, source: PhiloxStreams, low: float, high: float) -> torch.Tensor:
    """U(low, high) in place: the top 24 bits of each Philox4x32-10 word."""
    lib, n = library(), out.numel()
    args = (out.data_ptr(), n, *philox_counters(source, n), low, high)
    run_blocks(lambda next_block: lib.philox_uniform(*args, next_block), n)
    return out


def normal_(out: torch.Tensor, source: PhiloxStreams) -> torch.Tensor:
    """N(0, 1) in place: Box-Muller on Philox words, the numbers ``sample_output`` draws inside
    its pass for the same counters."""
    lib, n = library(), out.numel()
    args = (out.data_ptr(), n, *philox_counters(source, n))
    run_blocks(lambda next_block: lib.philox_normal(*args, next_block), n)
    return out


# ---- variational dropout -------------------------------------------------------------------


class _Sample(torch.autograd.Function):
    """mean + sqrt(variance + EPSILON) * noise in one pass (in place in mean), which also writes
    d out / d variance = noise / (2 sqrt(variance + EPSILON)): backward is one product, where
    autograd of the three ops takes two passes and two saved tensors. The noise is ``noise``
    (overwritten by that slope) or, if None, drawn in the same pass from ``source``'s Philox
    counters."""

    @staticmethod
    def forward(ctx, mean, variance, noise, source):  # type: ignore[override]
        lib, n = library(), mean.numel()
        if noise is not None:
            slope, args = noise, (mean.data_ptr(), variance.data_ptr(), noise.data_ptr(), n)
            run_blocks(lambda next_block: lib.vd_sample(*args, next_block), n)
        else:
            slope = torch.empty_like(mean)
            args = (mean.data_ptr(), variance.data_ptr(), slope.data_ptr(), n)
            args += philox_counters(source, n)
            run_blocks(lambda next_block: lib.vd_sample_philox(*args, next_block), n)
        ctx.mark_dirty(mean)
        ctx.save_for_backward(slope)
        return mean

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return grad, grad * slope, None, None


def sample_output(
    mean: torch.Tensor,
    variance: torch.Tensor,
    noise: torch.Tensor | None,
    source: PhiloxStreams | None,
) -> torch.Tensor:
    """``variational_dropout.sample_output``: the normals are ``noise`` if given (consumed),
    else drawn inside the pass from ``source``, else from the global generator."""
    if noise is None and source is None:
        noise = torch.randn_like(mean)
    return _Sample.apply(mean, variance, noise, source if noise is None else None)


class _VariationalTerms(torch.autograd.Function):
    """sigma^2 and sum KL in one pass each way: forward reads theta and log_sigma2 and writes
    sigma^2 and the KL's slope (flagged where the clip holds); backward reads those and writes
    the two gradients, with one division and no transcendental. The slope goes in
    ``new("slope")`` (see ``workspace.claim``)."""

    @staticmethod
    def forward(ctx, theta, log_sigma2, new, workspace, grad_scale):  # type: ignore[override]
        sigma2, slope, n = torch.empty_like(theta), new("slope"), theta.numel()
        args = (theta.data_ptr(), log_sigma2.data_ptr(), sigma2.data_ptr(), slope.data_ptr(), n)
        kl = run_summed(library().vd_forward, n, *args)
        ctx.save_for_backward(theta, sigma2, slope)
        ctx.workspace, ctx.grad_scale = workspace, grad_scale
        return sigma2, kl.to(theta.dtype)

    @staticmethod
    def backward(ctx, grad_sigma2, grad_kl):  # type: ignore[override]
        theta, sigma2, slope = ctx.saved_tensors
        lib, n = library(), theta.numel()
        grad_sigma2 = incoming(grad_sigma2, theta)
        grad_theta, grad_log_sigma2 = torch.empty_like(theta), torch.empty_like(theta)
        g_kl = 0.0 if grad_kl is None else float(grad_kl)
        args = (theta.data_ptr(), sigma2.data_ptr(), slope.data_ptr(), grad_sigma2.data_ptr())
        args += (g_kl, ctx.grad_scale, grad_theta.data_ptr(), grad_log_sigma2.data_ptr(), n)
        run_blocks(lambda next_block: lib.vd_backward(*args, next_block), n)
        if ctx.workspace is not None:
            ctx.workspace.release()
        return grad_theta, grad_log_sigma2, None, None, None


def variance_and_kl(
    theta: torch.Tensor, log_sigma2: torch.Tensor, new: Callable, workspace, grad_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``variational_dropout.variance_and_kl``'s fused terms: (clipped sigma^2, sum KL)."""
    return _VariationalTerms.apply(theta, log_sigma2, new, workspace, grad_scale)


# ---- l0 hard concrete ----------------------------------------------------------------------


class _HardConcreteWeight(torch.autograd.Function):
    """theta * z and the expected-l0 penalty in one pass each way: forward reads theta,
    log_alpha and the uniform draws and writes theta * z; backward recomputes the gates from the
    same draws (kept, unchanged, in ``noise``) and writes the two gradients."""

    @staticmethod
    def forward(ctx, theta, log_alpha, noise, workspace, grad_scale):  # type: ignore[override]
        weight, n = torch.empty_like(theta), theta.numel()
        args = (theta.data_ptr(), log_alpha.data_ptr(), noise.data_ptr(), weight.data_ptr(), n)
        penalty = run_summed(library().l0_forward, n, *args)
        ctx.save_for_backward(theta, log_alpha, noise)
        ctx.workspace, ctx.grad_scale = workspace, grad_scale
        return weight, penalty.to(theta.dtype)

    @staticmethod
    def backward(ctx, grad_weight, grad_penalty):  # type: ignore[override]
        theta, log_alpha, noise = ctx.saved_tensors
        lib, n = library(), theta.numel()
        grad_weight = incoming(grad_weight, theta)
        grad_theta, grad_log_alpha = torch.empty_like(theta), torch.empty_like(log_alpha)
        g_pen = 0.0 if grad_penalty is None else float(grad_penalty)
        args = (theta.data_ptr(), log_alpha.data_ptr(), noise.data_ptr(), grad_weight.data_ptr())
        args += (g_pen, ctx.grad_scale, grad_theta.data_ptr(), grad_log_alpha.data_ptr(), n)
        run_blocks(lambda next_block: lib.l0_backward(*args, next_block), n)
        if ctx.workspace is not None:
            ctx.workspace.release()
        return grad_theta, grad_log_alpha, None, None, None


def gated_weight_and_penalty(
    theta: torch.Tensor, log_alpha: torch.Tensor, noise: torch.Tensor, workspace, grad_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``l0.gated_weight_and_penalty``'s fused pass: (theta * z, expected l0) for the uniform
    draws in ``noise`` (kept for backward)."""
    return _HardConcreteWeight.apply(theta, log_alpha, noise, workspace, grad_scale)
