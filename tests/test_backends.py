"""The backend seam (layers/backends): ``use_backend`` decides which implementation runs the VD and
l0 training passes, refuses bad names in one line, and the C kernels take their constants from
the Python modules that define them."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.layers import L0_CLASSES, VD_CLASSES, backends, l0, reparameterise
from sparse_lightning.layers import variational_dropout as vd
from sparse_lightning.layers.backends import build, native
from sparse_lightning.layers.noise import NoiseSource
from tests.conftest import TINY, run_cli

# Only a missing compiler skips: a compiler whose build fails must fail these tests.
needs_kernels = pytest.mark.skipif(build.compiler() is None, reason="no C compiler on this machine")


@pytest.fixture(autouse=True)
def back_to_auto():
    yield
    backends.use_backend("auto")


def reparameterised_model(classes, **init) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    for name in ("0.weight", "2.weight"):
        reparameterise(model, name, classes, **init)
    for layer in model.modules():
        if hasattr(layer, "noise_source"):
            layer.noise_source = NoiseSource(0)
    return model.train()


MODELS = {
    "variational_dropout": lambda: reparameterised_model(
        VD_CLASSES, log_sigma2_init=-6.0, threshold=3.0
    ),
    "l0": lambda: reparameterised_model(L0_CLASSES),
}


def training_step(model: nn.Module) -> None:
    x = torch.randn(4, 3, 8, 8)
    loss = model(x).square().mean() + sum(m.regulariser() for m in model if hasattr(m, "weight"))
    loss.backward()


def kernels_that_raise():
    raise AssertionError("the native kernels were called")


@pytest.mark.parametrize("method", MODELS)
def test_the_torch_backend_trains_without_the_kernels(monkeypatch, method):
    assert backends.use_backend("torch") == "torch"
    monkeypatch.setattr(native, "library", kernels_that_raise)
    model = MODELS[method]()
    training_step(model)
    assert all(p.grad is not None for p in model.parameters())


@needs_kernels
@pytest.mark.parametrize("method", MODELS)
def test_the_native_backend_trains_with_the_kernels(monkeypatch, method):
    assert backends.use_backend("native") == "native"
    calls = []
    monkeypatch.setattr(native, "library", lambda: calls.append(1) or build.library())
    training_step(MODELS[method]())
    assert calls  # forward, noise and backward passes
    monkeypatch.setattr(native, "library", kernels_that_raise)
    with pytest.raises(AssertionError, match="native kernels were called"):
        training_step(MODELS[method]())


def test_auto_is_native_where_the_kernels_build_and_torch_elsewhere(monkeypatch):
    monkeypatch.setattr(build, "library", lambda: None)
    assert backends.use_backend("auto") == "torch"
    assert backends.active() == "torch"
    monkeypatch.setattr(build, "library", lambda: object())
    assert backends.use_backend("auto") == "native"
    assert backends.active() == "native"


@pytest.mark.parametrize("name", ["cuda", "Native", ""])
def test_a_bad_backend_name_is_one_config_error_line(name):
    with pytest.raises(ConfigError) as error:
        backends.use_backend(name)
    message = str(error.value)
    assert "\n" not in message
    assert f"backend='{name}'" in message and "auto, native, torch" in message


def test_native_where_the_kernels_cannot_be_built_is_one_config_error_line(monkeypatch):
    monkeypatch.setattr(build, "library", lambda: None)
    with pytest.raises(ConfigError) as error:
        backends.use_backend("native")
    assert "\n" not in str(error.value) and "backend='native'" in str(error.value)
    assert backends.active() != "native"


# ---- the C constants come from Python --------------------------------------------------------


@pytest.fixture
def rebuilt(tmp_path, monkeypatch):
    """Build the kernels afresh (after the test changed a constant) and make them the backend."""
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))

    def rebuild():
        lib = build.load(build.compiler(), None)
        monkeypatch.setattr(build, "library", lambda: lib)
        assert backends.use_backend("native") == "native"
        return lib

    return rebuild


@needs_kernels
def test_a_changed_vd_clip_reaches_the_kernels(monkeypatch, rebuilt):
    monkeypatch.setattr(vd, "LOG_ALPHA_CLIP", 4.0)
    rebuilt()
    theta = torch.full((10,), 0.1)
    log_sigma2 = torch.full((10,), math.log(0.01 + 1e-8) + 6.0)  # log_alpha 6: clipped to 4
    sigma2, _ = vd.variance_and_kl(theta, log_sigma2)
    expected = torch.full((10,), math.exp(4.0) * (0.01 + 1e-8))
    torch.testing.assert_close(sigma2, expected, rtol=1e-5, atol=0)


@needs_kernels
def test_changed_l0_stretch_and_penalty_shift_reach_the_kernels(monkeypatch, rebuilt):
    monkeypatch.setattr(l0, "GAMMA", -0.3)
    monkeypatch.setattr(l0, "PENALTY_SHIFT", 0.0)
    rebuilt()
    theta, log_alpha = torch.full((10,), 2.0), torch.zeros(10)
    u = torch.full((10,), 0.5)  # logit 0: s = sigmoid(0) = 0.5
    weight, penalty = l0.gated_weight_and_penalty(theta, log_alpha, noise=u, source=_Fixed())
    # z = 0.5 * (1.1 + 0.3) - 0.3 = 0.4; penalty = 10 sigmoid(0 - 0)
    torch.testing.assert_close(weight, torch.full((10,), 0.8), rtol=1e-6, atol=0)
    torch.testing.assert_close(penalty, torch.tensor(5.0), rtol=1e-6, atol=0)


class _Fixed:
    def uniform_(self, out, low, high):
        return out


@needs_kernels
def test_a_changed_philox_lane_count_reaches_the_kernels(monkeypatch, rebuilt):
    monkeypatch.setattr(build, "PHILOX_LANES", 512)
    lib = rebuilt()
    source = NoiseSource(3)
    u = source.uniform_(torch.empty(4096), 0.0, 1.0)
    # number 512 = word 1 of the first counter with 512 lanes (word 0 of counter 512 with 1024)
    import ctypes

    words = (ctypes.c_uint32 * 4)(0, 0, 0, 0), (ctypes.c_uint32 * 2)(*source.philox_key)
    out = (ctypes.c_uint32 * 4)()
    lib.philox4x32_10(*words, out)
    assert float(u[512]) == (out[1] >> 8) * 2.0**-24
    assert source.philox_counter == 2 * 512  # two chunks of 4 x 512 numbers


@needs_kernels
def test_a_changed_block_size_reaches_the_kernels(monkeypatch, rebuilt):
    monkeypatch.setattr(build, "BLOCK", 4096)
    lib = rebuilt()
    n = 3 * 4096 + 5
    theta, log_sigma2 = torch.full((n,), 0.1), torch.full((n,), -6.0)
    sigma2, slope = torch.empty(n), torch.empty(n)
    partials = torch.full((4,), math.nan, dtype=torch.float64)  # one per block of 4096
    args = (theta.data_ptr(), log_sigma2.data_ptr(), sigma2.data_ptr(), slope.data_ptr(), n)
    native.run_blocks(lambda next_block: lib.vd_forward(*args, next_block, partials.data_ptr()), n)
    assert bool(torch.isfinite(partials).all())  # every block wrote its partial sum
    expected = float(vd.kl_sum(theta.double(), log_sigma2.double()))
    assert float(partials.sum()) == pytest.approx(expected, rel=1e-5)


def test_a_run_records_the_backend_that_computed_its_passes(tmp_path):
    """`method.backend` is chosen once per run and results.json says which ran: the two draw
    different random numbers."""
    run = tmp_path / "vd"
    run_cli(run, "method=l0", "method.backend=torch", *TINY)
    results = json.loads((run / "results.json").read_text())
    assert results["method_details"]["backend"] == "torch"
