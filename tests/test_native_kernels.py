"""Both backends give the values and gradients of the VD and l0 formulas (against float64
autograd); the fused C kernels (layers/backends/kernels.c) do so independently of the thread
count, and the PyTorch path takes over where they cannot be built."""

from __future__ import annotations

import ctypes
import logging
import math
from functools import lru_cache

import pytest
import torch

from sparse_lightning.layers import backends, l0
from sparse_lightning.layers import variational_dropout as vd
from sparse_lightning.layers.backends import build, native
from sparse_lightning.layers.l0 import BETA, GAMMA, ZETA
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.layers.variational_dropout import K1, K2, K3

# Only a missing compiler skips: a compiler whose build fails must fail these tests.
needs_kernels = pytest.mark.skipif(build.compiler() is None, reason="no C compiler on this machine")

N = 3 * build.BLOCK + 123  # several blocks and a partial one


@pytest.fixture(params=["native", "torch"])
def backend(request):
    """Each backend in turn (the native one where the kernels can be built)."""
    if request.param == "native" and build.compiler() is None:
        pytest.skip("no C compiler on this machine")
    yield backends.use_backend(request.param)
    backends.use_backend("auto")


def vd_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(N, generator=g) * 0.1
    theta[:5] = torch.tensor([0.0, 1e-6, -1e-3, 3.0, -2.0])
    # log_alpha from -12 to 12: both clip ends and the inside
    log_sigma2 = torch.log(theta**2 + 1e-8) + torch.linspace(-12, 12, N)
    return theta, log_sigma2


def l0_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(N, generator=g)
    log_alpha = torch.linspace(-6, 6, N)
    u = torch.rand(N, generator=g) * (1 - 2e-6) + 1e-6
    return theta, log_alpha, u


def vd_reference(theta, log_sigma2):
    """The reference code's formulas, by autograd in float64."""
    la = (log_sigma2 - torch.log(theta**2 + 1e-8)).clamp(-8, 8)
    sigma2 = torch.exp(la) * (theta**2 + 1e-8)
    kl = -(K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * torch.log1p(torch.exp(-la)) - K1).sum()
    return sigma2, kl


def l0_reference(theta, log_alpha, u):
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
    weight = theta * torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0, 1)
    return weight, torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA)).sum()


def values_and_grads(fn, params, dtype=torch.float32):
    """fn's two outputs and the gradients of 3 sum(out * w) + 0.7 * sum_term."""
    leaves = [p.to(dtype).clone().requires_grad_() for p in params[:2]]
    out, term = fn(*leaves, *[p.to(dtype) for p in params[2:]])
    weights = torch.linspace(0.5, 2.0, out.numel(), dtype=dtype)
    ((out * weights).sum() * 3.0 + 0.7 * term).backward()
    return [out.detach().double(), term.detach().double(), *(p.grad.double() for p in leaves)]


def magnitudes(fn, params):
    """Per entry, in float64, the size of what each compared quantity sums: |out|, |term| and,
    for each gradient, |d(3 sum(out * w))/dp| + |d(0.7 term)/dp|. Rounding in float32 is
    relative to these (a gradient whose two parts cancel is small, its rounding error is not)."""
    parts = []
    for part in (0, 1):
        leaves = [p.double().clone().requires_grad_() for p in params[:2]]
        out, term = fn(*leaves, *[p.double() for p in params[2:]])
        weights = torch.linspace(0.5, 2.0, out.numel(), dtype=torch.float64)
        ((out * weights).sum() * 3.0 if part == 0 else 0.7 * term).backward()
        parts.append([p.grad.abs() if p.grad is not None else torch.zeros_like(p) for p in leaves])
        values = [out.detach().abs(), term.detach().abs()]
    return [*values, *(a + b for a, b in zip(*parts))]


def vd_magnitudes(theta, log_sigma2, reference=None):
    """``magnitudes`` of the VD formulas, with d theta's sigma^2 part taken term by term:
    sigma^2 = exp(la) (theta^2 + eps) with la = log_sigma2 - log(theta^2 + eps), so inside the
    clip its two product-rule terms, each 3 w 2 |theta| exp(la), cancel exactly."""
    scales = magnitudes(reference or vd_reference, (theta, log_sigma2))
    theta64 = theta.double()
    la = (log_sigma2.double() - torch.log(theta64**2 + 1e-8)).clamp(-8, 8)
    weights = torch.linspace(0.5, 2.0, theta.numel(), dtype=torch.float64)
    scales[2] = scales[2] + 3.0 * weights * 4.0 * theta64.abs() * torch.exp(la)
    return scales


def l0_magnitudes(theta, log_alpha, u):
    """``magnitudes`` of the l0 formulas, with the gate z = s (zeta - gamma) + gamma taken term by
    term: near z = 0 its two terms cancel."""
    scales = magnitudes(l0_reference, (theta, log_alpha, u))
    u64 = u.double()
    s = torch.sigmoid((torch.log(u64) - torch.log(1 - u64) + log_alpha.double()) / BETA)
    gate_terms = s * (ZETA - GAMMA) + abs(GAMMA)
    weights = torch.linspace(0.5, 2.0, theta.numel(), dtype=torch.float64)
    scales[0] = theta.double().abs() * gate_terms
    scales[2] = scales[2] + 3.0 * weights * gate_terms  # d theta = 3 w z
    return scales


def assert_close_relative(actual, expected, scales, rtol):
    """Entry by entry: |a - e| <= rtol * scale (float32 against float64), so one wrong entry
    fails whatever the size of the others."""
    for index, (a, e, scale) in enumerate(zip(actual, expected, scales)):
        error = (a - e).abs()
        bad = error > rtol * scale + 1e-30
        assert not bool(bad.any()), (
            f"output {index}: {int(bad.sum())} of {bad.numel()} entries off, worst relative "
            f"{float((error / scale.clamp_min(1e-30)).max()):.3g}"
        )


def test_vd_terms_match_autograd_of_the_formulas(backend):
    theta, log_sigma2 = vd_inputs()
    fused = values_and_grads(lambda t, s: vd.variance_and_kl(t, s), (theta, log_sigma2))
    reference = values_and_grads(vd_reference, (theta, log_sigma2), torch.float64)
    # exp and log in float32 (Cephes polynomials in the kernels) carry a few ulp each
    assert_close_relative(fused, reference, vd_magnitudes(theta, log_sigma2), rtol=1e-4)


def test_l0_gates_match_autograd_of_the_formulas(backend):
    theta, log_alpha, u = l0_inputs()

    def fused(t, la, u):
        return l0.gated_weight_and_penalty(t, la, noise=u.clone(), source=_FixedDraws())

    out = values_and_grads(fused, (theta, log_alpha, u))
    reference = values_and_grads(l0_reference, (theta, log_alpha, u), torch.float64)
    # log(u) - log(1 - u), a sigmoid and its slope in float32: a few 1e-4 on d log_alpha
    assert_close_relative(out, reference, l0_magnitudes(theta, log_alpha, u), rtol=5e-4)


class _FixedDraws:
    """A noise source that leaves the given draws in place (so both paths see the same u)."""

    def uniform_(self, out, low, high):
        return out


def scaled_vd_reference(theta, log_sigma2):
    """vd_reference with the layers' grad_scale 2 on log_sigma2 (identity forward)."""
    return vd_reference(theta, log_sigma2 + (log_sigma2 - log_sigma2.detach()))


@needs_kernels
def test_the_backends_agree_on_the_vd_terms_with_a_gradient_scale():
    def terms():
        return values_and_grads(lambda t, s: vd.variance_and_kl(t, s, None, 2.0), vd_inputs())

    try:
        backends.use_backend("native")
        native_vd = terms()
        backends.use_backend("torch")
        pytorch_vd = terms()
    finally:
        backends.use_backend("auto")
    scales = vd_magnitudes(*vd_inputs(), reference=scaled_vd_reference)
    assert_close_relative(native_vd, pytorch_vd, scales, rtol=2e-5)  # both float32


@needs_kernels
def test_results_do_not_depend_on_the_thread_count():
    theta, log_sigma2 = vd_inputs()
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            runs.append(
                values_and_grads(lambda t, s: vd.variance_and_kl(t, s), (theta, log_sigma2))
            )
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@needs_kernels
def test_only_cpu_float32_contiguous_tensors_take_the_kernels():
    x = torch.zeros(8, 4)
    assert backends.fused(x, x) is native
    assert backends.fused(x.double()) is None
    assert backends.fused(x.t()) is None
    assert backends.fused(x, torch.zeros(3)) is None


@needs_kernels
@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "thread-pool"])
def test_the_library_is_built_once_into_the_cache(tmp_path, monkeypatch, openmp):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    runtime = build.openmp_runtime() if openmp else None
    first = build.build(build.compiler(), runtime)
    mtime = first.stat().st_mtime_ns
    assert build.build(build.compiler(), runtime) == first
    assert first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


@needs_kernels
def test_kernels_share_pytorchs_openmp_threads_where_pytorch_has_openmp():
    runtime = build.openmp_runtime()
    if runtime is None:
        pytest.skip("PyTorch loaded no OpenMP runtime here")
    assert build.library().kernels_use_openmp() == 1


def test_without_a_compiler_the_pytorch_ops_run_and_say_why(monkeypatch, caplog):
    monkeypatch.setattr(build, "compiler", lambda: None)
    build.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert build.library() is None
        assert "no C compiler" in caplog.text
        assert backends.active() == "torch"
        theta, log_sigma2 = vd_inputs()
        sigma2, _ = vd.variance_and_kl(theta, log_sigma2)
        torch.testing.assert_close(sigma2, vd.clipped_sigma2(theta, log_sigma2))
    finally:
        build.library.cache_clear()


@needs_kernels
def test_disabled_by_the_environment(monkeypatch):
    monkeypatch.setenv(build.DISABLE_ENV, "0")
    build.library.cache_clear()
    try:
        assert build.library() is None
        assert backends.use_backend("auto") == "torch"
    finally:
        monkeypatch.delenv(build.DISABLE_ENV)
        build.library.cache_clear()
        assert build.library() is not None
        assert backends.use_backend("auto") == "native"


def thread_pool_library():
    """The kernels built without OpenMP: ``run_blocks`` threads them with its own pool."""
    library = build.load(build.compiler(), None)
    assert library.kernels_use_openmp() == 0
    return library


@needs_kernels
def test_openmp_and_the_thread_pool_give_identical_numbers(monkeypatch):
    openmp = values_and_grads(vd.variance_and_kl, vd_inputs())
    monkeypatch.setattr(build, "library", thread_pool_library)
    pooled = values_and_grads(vd.variance_and_kl, vd_inputs())
    for a, b in zip(openmp, pooled):
        assert torch.equal(a, b)


@needs_kernels
def test_a_forked_child_gets_its_own_thread_pool():
    import multiprocessing

    from sparse_lightning.layers.threads import pool

    pool().submit(int).result()  # the parent's pool has started its threads
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as children:
        total = children.apply_async(_sum_of_sigma2_in_a_child).get(timeout=120)  # a hang fails
    theta, log_sigma2 = vd_inputs()
    assert total == float(vd.variance_and_kl(theta, log_sigma2)[0].sum())


def _sum_of_sigma2_in_a_child() -> float:
    # torch runs single-threaded in a forked child (GNU OpenMP is not fork-safe); pretend two
    # threads so that the thread-pool kernels use the pool
    torch.get_num_threads = lambda: 2
    build.library = lru_cache(maxsize=1)(thread_pool_library)
    theta, log_sigma2 = vd_inputs()
    return float(vd.variance_and_kl(theta, log_sigma2)[0].sum())


def test_the_sampled_output_and_its_gradients_match_the_formula(backend):
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(N, generator=g)
    variance = torch.rand(N, generator=g) * 3
    variance[:3] = 0.0  # sqrt(0 + eps): the gradient stays finite
    noise = torch.randn(N, generator=g)
    grad = torch.randn(N, generator=g)
    results = []
    for dtype in (torch.float32, torch.float64):  # the backend; PyTorch ops in float64
        m = mean.to(dtype, copy=True).requires_grad_()
        v = variance.to(dtype, copy=True).requires_grad_()
        out = vd.sample_output(m * 1.0, v * 1.0, noise.to(dtype).clone())
        (out * grad.to(dtype)).sum().backward()
        results.append([out.detach().double(), m.grad.double(), v.grad.double()])
    std = (variance.double() + 1e-8).sqrt()
    noise64, grad64 = noise.double(), grad.double()
    scales = [  # mean + std * z, its d/dmean and d/dvariance = grad * z / (2 std)
        mean.double().abs() + (std * noise64).abs(),
        grad64.abs(),
        (grad64 * noise64 / (2 * std)).abs(),
    ]
    assert_close_relative(results[0], results[1], scales, rtol=1e-5)


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Random123's known-answer vectors (kat_vectors, philox4x32 10)
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ],
)
@needs_kernels
def test_philox_matches_the_published_known_answers(counter, key, expected):
    words = (ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), (ctypes.c_uint32 * 4)()
    build.library().philox4x32_10(*words)
    assert list(words[2]) == expected


@needs_kernels
def test_uniform_draws_do_not_depend_on_the_thread_count_and_continue_across_draws():
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            source = NoiseSource(3, rank=2)
            runs.append([source.uniform_(torch.empty(N), 0.1, 0.9) for _ in range(2)])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    first, second = runs[0]
    assert not torch.equal(first[:1000], second[:1000])  # the second draw uses new counters


@needs_kernels
def test_normal_draws_have_the_standard_normal_quantiles():
    z = NoiseSource(11).normal_(torch.empty(1 << 20))
    probabilities = torch.tensor([0.001, 0.02275, 0.15866, 0.5, 0.84134, 0.97725, 0.999])
    expected = torch.distributions.Normal(0.0, 1.0).icdf(probabilities)
    torch.testing.assert_close(torch.quantile(z, probabilities), expected, atol=0.02, rtol=0)
    assert abs(z.mean().item()) < 0.005 and abs(z.std().item() - 1) < 0.005


@needs_kernels
def test_the_fused_vd_sample_draws_the_noise_sources_normals():
    mean, variance = torch.zeros(N), torch.ones(N)  # sqrt(1 + eps) == 1 in float32
    m, v = mean.clone().requires_grad_(), variance.clone().requires_grad_()
    out = vd.sample_output(m * 1.0, v * 1.0, source=NoiseSource(4, rank=1))
    out.sum().backward()
    z = NoiseSource(4, rank=1).normal_(torch.empty(N))
    assert torch.equal(out.detach(), z)
    assert torch.equal(v.grad, 0.5 * z) and torch.equal(m.grad, torch.ones(N))
