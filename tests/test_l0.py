"""l0 regularisation with hard concrete gates: the math against independent computations, the
layers, the callback inside a real Trainer, bad input, and one tiny end-to-end run."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lightning.callbacks import L0Regularization
from sparse_lightning.errors import ConfigError
from sparse_lightning.layers import L0_CLASSES, l0, reparameterise
from sparse_lightning.layers.workspace import claim
from sparse_lightning.schedules import RegulariserRamp
from tests.toy import fit

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1  # Louizos et al. (2018), typed independently


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_gate_samples_lie_in_0_1_with_exact_zeros_and_ones():
    torch.manual_seed(0)
    log_alpha = torch.linspace(-3, 3, 20000)
    z = l0.sample_gate(log_alpha)
    assert z.min() >= 0.0 and z.max() <= 1.0
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()


def test_gate_sample_matches_the_formula_at_given_noise():
    log_alpha = torch.tensor([-2.0, 0.0, 0.5, 2.197, 4.0], dtype=torch.float64)
    u = torch.tensor([0.3, 0.5, 0.9, 0.01, 0.999], dtype=torch.float64)
    z = l0.sample_gate(log_alpha, u)
    for i in range(5):
        s = sigmoid((math.log(u[i]) - math.log(1 - u[i]) + float(log_alpha[i])) / BETA)
        assert float(z[i]) == pytest.approx(min(1.0, max(0.0, s * (ZETA - GAMMA) + GAMMA)))


def test_eval_gate_and_penalty_match_the_formulas():
    values = [-5.0, -2.4, -1.0, 0.0, 1.0, 2.197, 2.5, 6.0]
    log_alpha = torch.tensor(values, dtype=torch.float64)
    gate = l0.eval_gate(log_alpha)
    for i, la in enumerate(values):
        expected = min(1.0, max(0.0, sigmoid(la) * (ZETA - GAMMA) + GAMMA))
        assert float(gate[i]) == pytest.approx(expected)
    assert gate[0] == 0.0 and gate[-1] == 1.0
    penalty = sum(sigmoid(la - BETA * math.log(-GAMMA / ZETA)) for la in values)
    assert float(l0.expected_l0(log_alpha)) == pytest.approx(penalty)


def test_penalty_is_the_mean_number_of_nonzero_sampled_gates():
    torch.manual_seed(0)
    log_alpha = torch.full((200000,), -0.5)
    nonzero = (l0.sample_gate(log_alpha) > 0).float().mean()
    assert float(nonzero) == pytest.approx(float(l0.expected_l0(log_alpha[:1])), abs=0.01)


@pytest.mark.parametrize(
    "module, x",
    [
        (nn.Linear(6, 3), torch.randn(4, 6)),
        (nn.Conv1d(2, 3, 3, padding=1), torch.randn(4, 2, 8)),
        (nn.Conv2d(2, 3, 3, padding=1), torch.randn(4, 2, 5, 5)),
        (nn.Embedding(10, 4), torch.randint(0, 10, (4, 3))),
    ],
)
def test_gradients_reach_log_alpha_and_theta_and_eval_uses_the_eval_gate(module, x):
    torch.manual_seed(0)
    plain = copy.deepcopy(module)
    layer = reparameterise(nn.Sequential(module), "0.weight", L0_CLASSES)
    la = layer.log_alpha.detach()
    assert la.mean().item() == pytest.approx(2.197, abs=0.01) and la.std() < 0.02
    (layer(x).square().sum() + layer.regulariser()).backward()
    for p in (layer.weight, layer.log_alpha):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with torch.no_grad():
        layer.log_alpha.uniform_(-4, 4)
    layer.eval()
    out = layer(x)
    gate = torch.clamp(torch.sigmoid(layer.log_alpha) * 1.2 - 0.1, 0, 1)
    with torch.no_grad():
        plain.weight.copy_(layer.weight * gate)
    expected = plain(x)
    torch.testing.assert_close(out, expected)
    keep = layer.fold_()
    assert torch.equal(keep, gate > 0)
    torch.testing.assert_close(layer(x), expected)  # folded weights give the same output
    assert (layer.weight[~keep] == 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weight=-0.1), "weight=-0.1"),
        (dict(weight=float("inf")), "weight=inf"),
        (dict(ramp=(5, 2)), "begin_step=5"),
        (dict(ramp=(-1, 10)), "begin_step=-1"),
    ],
)
def test_bad_input_is_a_config_error(kwargs, message):
    args = dict(weight=1e-3, ramp=(0, 10))
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        L0Regularization(**{**args, "ramp": RegulariserRamp(*args["ramp"])})


def test_callback_ends_with_eval_gate_masks_and_folded_weights():
    pl.seed_everything(0)
    method = L0Regularization(weight=0.12, ramp=RegulariserRamp(0, 10), grad_scale=100.0)
    fit(method, steps=30)
    assert 0.0 < method.mask_set.sparsity() < 1.0
    for entry, layer in zip(method.mask_set.entries, method.layers):
        assert torch.equal(entry.mask, l0.eval_gate(layer.log_alpha) > 0)
        assert (entry.weight[~entry.mask] == 0).all()


def test_fused_gate_and_penalty_match_autograd_of_the_formulas():
    torch.manual_seed(0)
    theta = torch.randn(2000, dtype=torch.float64)
    log_alpha = torch.linspace(-4, 4, 2000, dtype=torch.float64)
    u = torch.rand(2000, dtype=torch.float64) * 0.998 + 0.001
    grads = []
    for fused in (True, False):
        t = theta.clone().requires_grad_()
        la = log_alpha.clone().requires_grad_()
        if fused:
            new, _ = claim(None, la)
            weight, penalty = l0._HardConcreteWeight.apply(t, la, u.clone(), new, None, 1.0)
        else:
            s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + la) / BETA)
            weight = t * torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0, 1)
            penalty = torch.sigmoid(la - BETA * math.log(-GAMMA / ZETA)).sum()
        (weight * torch.linspace(-1, 1, 2000, dtype=torch.float64)).sum().mul(2.0).add(
            0.3 * penalty
        ).backward()
        grads.append((weight.detach(), penalty.detach(), t.grad, la.grad))
    for fused, reference in zip(*grads):
        torch.testing.assert_close(fused, reference)
