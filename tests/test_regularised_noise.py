"""VD and l0 training noise and buffers: reproducible per (seed, rank), independent of the thread
count, checkpointed so a resumed run continues exactly; reused buffers never change a result."""

import pytest
import pytorch_lightning as pl
import torch

from sparse_lightning.callbacks import L0Regularization, VariationalDropout
from sparse_lightning.layers import l0, noise
from sparse_lightning.layers import variational_dropout as vd
from sparse_lightning.layers.backends import build as native
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.layers.workspace import Workspace
from sparse_lightning.schedules import RegulariserRamp
from tests.toy import fit

BIG = noise.PARALLEL_MIN_NUMEL * 4  # drawn by the thread pool


def draws(source: NoiseSource, numel: int = BIG) -> tuple[torch.Tensor, torch.Tensor]:
    return source.uniform_(torch.empty(numel), 0.25, 0.75), source.normal_(torch.empty(numel))


def test_same_seed_and_rank_draw_the_same_numbers_and_other_ranks_other_numbers():
    first, again, other_rank, other_seed = (
        draws(NoiseSource(seed, rank)) for seed, rank in [(3, 0), (3, 0), (3, 1), (4, 0)]
    )
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    for a, b in zip(first, other_rank):
        assert not torch.equal(a, b)
    for a, b in zip(first, other_seed):
        assert not torch.equal(a, b)


@pytest.mark.parametrize("kernels", [True, False], ids=["philox-kernels", "pytorch-generators"])
def test_the_numbers_do_not_depend_on_threads(monkeypatch, kernels):
    """Each path as it runs: the kernels on 1 and 3 OpenMP threads; PyTorch's generators drawn
    in the calling thread and by the thread pool."""
    if not kernels:
        monkeypatch.setattr(native, "library", lambda: None)
    elif native.compiler() is None:
        pytest.skip("no C compiler: the kernels cannot be built")
    assert NoiseSource(7).draws_in_kernels(torch.empty(BIG)) is kernels
    before, runs = torch.get_num_threads(), []
    try:
        for threads, parallel_min in [(1, BIG * 2), (3, 1)]:
            torch.set_num_threads(threads)
            monkeypatch.setattr(noise, "PARALLEL_MIN_NUMEL", parallel_min)
            runs.append(draws(NoiseSource(7)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "dtype, numel", [(torch.float32, BIG), (torch.float64, BIG), (torch.float32, 9)]
)
def test_uniform_draws_fill_the_interval_evenly(dtype, numel):
    u = NoiseSource(0).uniform_(torch.empty(numel, dtype=dtype), 1e-6, 1 - 1e-6)
    assert u.min() >= 1e-6 and u.max() < 1 - 1e-6
    if numel == BIG:
        assert abs(u.mean().item() - 0.5) < 0.005
        assert abs(u.var().item() - 1 / 12) < 0.002
        assert u.unique().numel() > 0.97 * numel  # birthday bound: 22 or more random bits


def test_normal_draws_are_standard_normal():
    z = NoiseSource(0).normal_(torch.empty(BIG))
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


def test_saved_streams_continue_where_they_stopped_and_only_on_the_same_rank():
    source = NoiseSource(5, rank=1)
    draws(source)
    state = source.state_dict()
    expected = draws(source)
    restored = NoiseSource(5, rank=1)
    assert restored.load_state_dict(state)
    for a, b in zip(expected, draws(restored)):
        assert torch.equal(a, b)
    assert not NoiseSource(5, rank=0).load_state_dict(state)


def vd_step(theta, log_sigma2, workspace, grad_scale=1.0):
    sigma2, kl = vd.variance_and_kl(theta, log_sigma2, workspace, grad_scale)
    (sigma2 * torch.linspace(0.5, 2, theta.numel()).view_as(theta)).sum().add(0.3 * kl).backward()
    return sigma2.detach(), kl.detach()


def l0_step(theta, log_alpha, workspace, grad_scale=1.0):
    weight, penalty = l0.gated_weight_and_penalty(
        theta, log_alpha, source=NoiseSource(0), workspace=workspace, grad_scale=grad_scale
    )
    (weight * torch.linspace(-1, 1, theta.numel()).view_as(theta)).sum().add(
        0.3 * penalty
    ).backward()
    return weight.detach(), penalty.detach()


@pytest.mark.parametrize("step, init", [(vd_step, -6.0), (l0_step, 2.0)])
def test_reused_buffers_give_what_fresh_tensors_give_step_after_step(step, init):
    torch.manual_seed(0)
    theta0 = torch.randn(64, 33) * 0.1
    extra0 = torch.full_like(theta0, init) + torch.randn_like(theta0)
    results = []
    for workspace in (None, Workspace()):
        theta, extra = theta0.clone().requires_grad_(), extra0.clone().requires_grad_()
        per_step = []
        for _ in range(3):
            out = step(theta, extra, workspace)
            per_step.append((*out, theta.grad.clone(), extra.grad.clone()))
            theta.grad = extra.grad = None
            with torch.no_grad():  # parameters move, as after an optimiser step
                theta.sub_(0.01)
                extra.add_(0.1)
        results.append(per_step)
    for fresh, reused in zip(*results):
        for a, b in zip(fresh, reused):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_second_forward_before_backward_does_not_share_buffers():
    torch.manual_seed(0)
    theta = (torch.randn(20, 30) * 0.1).requires_grad_()
    log_sigma2 = torch.full_like(theta, -6.0).requires_grad_()
    workspace = Workspace()
    first = vd.variance_and_kl(theta, log_sigma2, workspace)
    second = vd.variance_and_kl(theta * 2, log_sigma2, workspace)  # first's graph is pending
    (first[0].sum() + first[1] + second[0].sum() + second[1]).backward()
    expected_theta, expected_ls = theta.grad.clone(), log_sigma2.grad.clone()
    theta.grad = log_sigma2.grad = None
    for t in (theta, theta * 2):
        sigma2, kl = vd.variance_and_kl(t, log_sigma2)
        (sigma2.sum() + kl).backward()
    torch.testing.assert_close(theta.grad, expected_theta)
    torch.testing.assert_close(log_sigma2.grad, expected_ls)
    assert not workspace.busy


@pytest.mark.parametrize("step, init", [(vd_step, -6.0), (l0_step, 2.0)])
def test_grad_scale_multiplies_only_the_added_parameter_gradient(step, init):
    torch.manual_seed(0)
    theta0 = torch.randn(16, 8) * 0.1
    grads = []
    for scale in (1.0, 10.0):
        theta = theta0.clone().requires_grad_()
        extra = torch.full_like(theta0, init).requires_grad_()
        step(theta, extra, None, grad_scale=scale)
        grads.append((theta.grad, extra.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1] * 10.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: VariationalDropout(kl_weight=0.05, ramp=RegulariserRamp(0, 12), threshold=0.0),
        lambda: L0Regularization(weight=1e-3, ramp=RegulariserRamp(0, 12), grad_scale=100.0),
    ],
    ids=["variational_dropout", "l0"],
)
def test_a_run_resumed_from_a_checkpoint_ends_exactly_as_an_uninterrupted_one(tmp_path, make):
    every_8 = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}"
    )
    pl.seed_everything(0)
    uninterrupted, _ = fit(make(), steps=16, callbacks=[every_8], shuffle=False)
    pl.seed_everything(1)  # the global generator plays no part: the noise streams are restored
    resumed, _ = fit(make(), steps=16, ckpt_path=tmp_path / "step=8.ckpt", shuffle=False)
    expected = uninterrupted.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key
