"""Sparse variational dropout: the math against independent computations, the layer swap, the
callback inside a real Trainer, bad input, and one tiny end-to-end run."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sparse_lightning.callbacks import VariationalDropout
from sparse_lightning.errors import ConfigError
from sparse_lightning.layers import VD_CLASSES, reparameterise, strip_reparameterisation
from sparse_lightning.layers import variational_dropout as vd
from sparse_lightning.modules import ClassificationModule
from sparse_lightning.schedules import RegulariserRamp
from tests.toy import fit, loader, tiny_model

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. (2017), eq. 14, typed independently


def kl_reference(la: float) -> float:
    """KL at one log_alpha, in plain Python floats."""
    neg = K1 / (1.0 + math.exp(-(K2 + K3 * la))) - 0.5 * math.log(1.0 + math.exp(-la)) - K1
    return -neg


def conv1d_by_matmul(x: torch.Tensor, w: torch.Tensor, padding: int) -> torch.Tensor:
    """Independent 1-D convolution: im2col by explicit slicing, then a matmul."""
    x = F.pad(x, (padding, padding))
    k = w.shape[-1]
    length = x.shape[-1] - k + 1
    cols = torch.stack([x[:, :, i : i + k].reshape(x.shape[0], -1) for i in range(length)], 1)
    return (cols @ w.reshape(w.shape[0], -1).T).transpose(1, 2)


def ls2_for(theta: torch.Tensor, low: float = -3.0, high: float = 3.0) -> torch.Tensor:
    """log_sigma2 whose log_alpha lies inside the clip range (so sigma^2 = exp(log_sigma2))."""
    g = torch.Generator().manual_seed(1)
    return torch.log(theta**2 + vd.EPSILON) + torch.empty_like(theta).uniform_(
        low, high, generator=g
    )


def test_noise_free_training_forward_is_the_mean_for_linear_and_conv():
    torch.manual_seed(0)
    x, theta, b = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    out = vd.train_forward(F.linear, x, theta, ls2_for(theta), b, noise=torch.zeros(5, 3))
    torch.testing.assert_close(out, x @ theta.T + b)

    xc, wc = torch.randn(2, 3, 9), torch.randn(4, 3, 3)
    conv = nn.Conv1d(3, 4, 3, padding=1, bias=False)
    out = vd.train_forward(conv._conv_forward, xc, wc, ls2_for(wc), None, torch.zeros(2, 4, 9))
    torch.testing.assert_close(out, conv1d_by_matmul(xc, wc, 1), rtol=1e-5, atol=1e-5)


def test_output_variance_is_x_squared_times_sigma_squared():
    torch.manual_seed(0)
    x, theta = torch.randn(5, 7), torch.randn(3, 7)
    log_sigma2 = ls2_for(theta)
    out = vd.train_forward(F.linear, x, theta, log_sigma2, None, noise=torch.ones(5, 3))
    variance = (x**2) @ torch.exp(log_sigma2).T
    torch.testing.assert_close(out - x @ theta.T, torch.sqrt(variance + 1e-8))

    xc, wc = torch.randn(2, 3, 9), torch.randn(4, 3, 3)
    lc = ls2_for(wc)
    conv = nn.Conv1d(3, 4, 3, padding=1, bias=False)
    out = vd.train_forward(conv._conv_forward, xc, wc, lc, None, torch.ones(2, 4, 9))
    variance = conv1d_by_matmul(xc**2, torch.exp(lc), 1)
    expected = conv1d_by_matmul(xc, wc, 1) + torch.sqrt(variance + 1e-8)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_sampled_output_has_the_predicted_variance():
    torch.manual_seed(0)
    x, theta = torch.randn(1, 6).expand(20000, 6), torch.randn(2, 6)
    log_sigma2 = ls2_for(theta)
    out = vd.train_forward(F.linear, x, theta, log_sigma2)
    expected = ((x[0] ** 2) @ torch.exp(log_sigma2).T) + 1e-8
    torch.testing.assert_close(out.var(0), expected, rtol=0.05, atol=0.0)


def test_kl_matches_the_formula_and_decreases_in_log_alpha():
    values = [-6.0, -2.5, -1.0, 0.0, 0.7, 2.0, 5.0]
    theta = torch.ones(len(values), dtype=torch.float64)
    log_sigma2 = torch.tensor(values, dtype=torch.float64) + math.log(1.0 + vd.EPSILON)
    for i, la in enumerate(values):
        got = vd.kl_sum(theta[i : i + 1], log_sigma2[i : i + 1])
        assert float(got) == pytest.approx(kl_reference(la), rel=1e-9)
    assert float(vd.kl_sum(theta, log_sigma2)) == pytest.approx(sum(map(kl_reference, values)))
    grid = torch.linspace(-7.9, 7.9, 200, dtype=torch.float64)
    kl = -vd.negative_kl(grid)
    assert (kl[1:] < kl[:-1]).all()


def test_log_alpha_is_clipped_and_sigma2_follows_the_clipped_value():
    theta = torch.tensor([1.0, 1.0, 1e-3, 2.0])
    log_sigma2 = torch.tensor([20.0, -30.0, 0.0, 0.5])
    la = vd.log_alpha(theta, log_sigma2)
    assert la.min() >= -8.0 and la.max() <= 8.0
    assert la[0] == 8.0 and la[1] == -8.0 and la[2] == 8.0
    sigma2 = vd.clipped_sigma2(theta, log_sigma2)
    t = theta**2 + 1e-8
    expected = torch.stack([math.exp(8) * t[0], math.exp(-8) * t[1], math.exp(8) * t[2]])
    torch.testing.assert_close(sigma2[:3], expected)
    torch.testing.assert_close(sigma2[3], torch.exp(log_sigma2[3]))


def vd_layer(module: nn.Module, threshold: float = 0.5) -> nn.Module:
    model = nn.Sequential(module)
    return reparameterise(model, "0.weight", VD_CLASSES, log_sigma2_init=-4.0, threshold=threshold)


@pytest.mark.parametrize(
    "module, x",
    [
        (nn.Linear(6, 3), torch.randn(4, 6)),
        (nn.Conv1d(2, 3, 3, padding=1), torch.randn(4, 2, 8)),
        (nn.Conv2d(2, 3, 3, padding=1), torch.randn(4, 2, 5, 5)),
        (nn.Embedding(10, 4), torch.randint(0, 10, (4, 3))),
    ],
)
def test_gradients_reach_theta_and_log_sigma2_and_eval_is_the_masked_mean(module, x):
    torch.manual_seed(0)
    plain = copy.deepcopy(module)
    weight = module.weight
    layer = vd_layer(module)
    assert layer is module and layer.weight is weight  # same object, same Parameter
    assert set(dict(layer.named_parameters())) >= {"weight", "log_sigma2"}
    with torch.no_grad():
        layer.log_sigma2.uniform_(-6.0, 2.0)
    (layer(x).square().sum() + layer.regulariser()).backward()
    for p in (layer.weight, layer.log_sigma2):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0

    layer.eval()
    first, second = layer(x), layer(x)
    assert torch.equal(first, second)
    la = layer.log_sigma2 - torch.log(layer.weight**2 + 1e-8)
    assert 0 < int((la >= 0.5).sum()) < la.numel()  # some pruned, some kept
    with torch.no_grad():
        plain.weight.copy_(torch.where(la < 0.5, layer.weight, 0.0))
    torch.testing.assert_close(first, plain(x))


def test_swap_keeps_names_and_strip_gives_a_plain_state_dict():
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(8, 2))
    before = set(model.state_dict())
    for name in ("0.weight", "2.weight"):
        reparameterise(model, name, VD_CLASSES, log_sigma2_init=-10.0, threshold=3.0)
    after = set(model.state_dict())
    assert after - before == {"0.log_sigma2", "2.log_sigma2"}
    nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(8, 2)).load_state_dict(
        strip_reparameterisation(model.state_dict())
    )
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone[0]).__name__ == "VDConv1d" and torch.equal(
        clone[0].log_sigma2, model[0].log_sigma2
    )
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        reparameterise(nn.Sequential(nn.BatchNorm1d(3)), "0.weight", VD_CLASSES)


def test_ramp_is_linear_or_cubic_between_its_bounds():
    assert RegulariserRamp(10, 20, "linear").fraction_at(0) == 0.0
    assert RegulariserRamp(10, 20, "linear").fraction_at(15) == pytest.approx(0.5)
    assert RegulariserRamp(10, 20, "cubic").fraction_at(15) == pytest.approx(1 - 0.5**3)
    assert RegulariserRamp(10, 20, "cubic").fraction_at(25) == 1.0
    assert RegulariserRamp(10, 10, "linear").fraction_at(10) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kl_weight=-1.0), "kl_weight=-1.0"),
        (dict(kl_weight=float("nan")), "kl_weight=nan"),
        (dict(threshold=float("inf")), "threshold=inf"),
        (dict(ramp=(30, 10)), "begin_step=30"),
        (dict(ramp=(0, 10, "quadratic")), "shape='quadratic'"),
        (dict(backend="fast"), "backend='fast'"),
    ],
)
def test_bad_input_is_a_config_error(kwargs, message):
    args = dict(kl_weight=1e-3, ramp=(0, 10), threshold=3.0)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        VariationalDropout(**{**args, "ramp": RegulariserRamp(*args["ramp"])})


def test_callback_trains_ends_with_evaluation_masks_and_resumes_from_a_checkpoint(tmp_path):
    pl.seed_everything(0)
    method = VariationalDropout(kl_weight=0.05, ramp=RegulariserRamp(0, 10), threshold=0.0)
    module, trainer = fit(method)
    names = method.mask_set.names
    assert names == ["0.weight", "4.weight", "6.weight"]
    no_decay = trainer.optimizers[0].param_groups[1]  # L2 on log_sigma2 is not part of VD
    assert no_decay["weight_decay"] == 0.0
    assert {id(p) for p in no_decay["params"]} == {id(layer.log_sigma2) for layer in method.layers}
    masks = method.mask_set.masks()
    assert 0.0 < method.mask_set.sparsity() < 1.0
    for entry, layer in zip(method.mask_set.entries, method.layers):
        la = layer.log_sigma2 - torch.log(layer.weight**2 + 1e-8)
        assert torch.equal(masks[entry.name], la < 0.0)  # theta zeroed => pruned stay pruned
        assert (entry.weight[~entry.mask] == 0).all()

    path = tmp_path / "vd.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert {"model.0.log_sigma2", "model.0.weight", "model.0.weight_mask"} <= set(state)
    pl.seed_everything(1)
    fresh_method = VariationalDropout(kl_weight=0.05, ramp=RegulariserRamp(0, 10), threshold=0.0)
    fresh, fresh_trainer = fit(fresh_method, steps=20, ckpt_path=path)
    assert fresh_trainer.global_step == 20  # nothing left to do: restored at the last step
    for key, value in module.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key


def test_fused_variance_and_kl_match_autograd_of_the_formulas():
    torch.manual_seed(0)
    theta = torch.randn(400, dtype=torch.float64) * 0.1
    theta[:5] = 0.0
    # log_alpha from -12 to 12: both clip ends and the inside are covered
    log_sigma2 = torch.log(theta**2 + 1e-8) + torch.linspace(-12, 12, 400, dtype=torch.float64)
    grads = []
    for fused in (True, False):
        t = theta.clone().requires_grad_()
        ls2 = log_sigma2.clone().requires_grad_()
        if fused:
            sigma2, kl = vd.variance_and_kl(t, ls2)
        else:
            la = (ls2 - torch.log(t**2 + 1e-8)).clamp(-8, 8)
            sigma2 = torch.exp(la) * (t**2 + 1e-8)
            kl = -(K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * torch.log1p(torch.exp(-la)) - K1).sum()
        weights = torch.linspace(0.5, 2.0, 400, dtype=torch.float64)
        ((sigma2 * weights).sum() * 3.0 + 0.7 * kl).backward()
        grads.append((sigma2.detach(), kl.detach(), t.grad, ls2.grad))
    for fused, reference in zip(*grads):
        torch.testing.assert_close(fused, reference)


class _PoisonAt(pl.Callback):
    """Makes the loss NaN from a given step on, by writing NaN into one weight."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model[4].weight[0, 0] = float("nan")


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_method_state():
    from sparse_lightning.run.finite_loss import FiniteLossGuard, NonFiniteLossError

    pl.seed_everything(0)
    method = VariationalDropout(kl_weight=1e-3, ramp=RegulariserRamp(0, 10))
    module = ClassificationModule(
        tiny_model(), lambda p: torch.optim.SGD(p, lr=0.05), num_classes=4
    )
    trainer = pl.Trainer(
        max_steps=12,
        callbacks=[method, FiniteLossGuard(method.describe), _PoisonAt(7)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.raises(NonFiniteLossError, match=r"step 8; variational_dropout with kl_weight"):
        trainer.fit(module, loader(batch_size=32))
    assert "not finite)" in method.describe()  # the state says what blew up
