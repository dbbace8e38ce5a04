"""VD and l0 as methods: the regulariser's gradient, the finish, what is logged, and the run's
reported accuracy against the exported plain model's.

Expected values come from the formulas typed here (Molchanov et al. 2017, eq. 14; Louizos et al.
2018, eq. 13) and from kl_weight = 0 / weight = 0 controls, never from the implementation."""

from __future__ import annotations

import csv
import json
import math

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sparse_lightning.callbacks import L0Regularization, VariationalDropout
from sparse_lightning.config import CONF_DIR
from sparse_lightning.export import export
from sparse_lightning.modules import ClassificationModule
from sparse_lightning.schedules import RegulariserRamp
from tests.conftest import TINY, run_cli
from tests.toy import fit, loader, tiny_model

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. (2017), eq. 14
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1  # Louizos et al. (2018)


def kl_sum(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """sum of -(k1 sigmoid(k2 + k3 la) - 0.5 log1p(exp(-la)) - k1),
    la = clip(log_sigma2 - log(theta^2 + eps), -8, 8)."""
    la = (log_sigma2 - torch.log(theta**2 + 1e-8)).clamp(-8.0, 8.0)
    return -(K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * torch.log1p(torch.exp(-la)) - K1).sum()


def expected_l0(log_alpha: torch.Tensor) -> torch.Tensor:
    """sum of sigmoid(log_alpha - beta log(-gamma / zeta))."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA)).sum()


def attached(method):
    """``method`` set up on the tiny model the way Lightning's ``setup`` does it."""
    module = ClassificationModule(tiny_model(), lambda p: torch.optim.SGD(p, lr=0.1), 4)
    method.setup(None, module, "fit")
    return module


# -- the regulariser carries its gradient ------------------------------------------------------
def test_vd_loss_back_propagates_weight_times_the_kl_gradient():
    torch.manual_seed(0)
    method = VariationalDropout(kl_weight=0.3, ramp=RegulariserRamp(0, 0), log_sigma2_init=-4.0)
    module = attached(method)
    with torch.no_grad():  # log_alpha spread over the clip range, some entries clipped
        for layer in method.layers:
            layer.log_sigma2.uniform_(-9.0, 3.0)
    module.train()
    module.model(next(iter(loader()))[0])  # the training forward computes the KL in its pass
    method.loss().backward()
    for layer in method.layers:
        theta = layer.weight.detach().double().requires_grad_()
        ls2 = layer.log_sigma2.detach().double().requires_grad_()
        (0.3 * kl_sum(theta, ls2)).backward()
        # float32 against float64: 1e-4 relative, and 1e-7 absolute on a gradient of ~0.1
        torch.testing.assert_close(layer.log_sigma2.grad.double(), ls2.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(layer.weight.grad.double(), theta.grad, rtol=1e-3, atol=1e-7)
        assert float(ls2.grad.abs().sum()) > 0


def test_l0_loss_back_propagates_weight_times_the_expected_l0_gradient():
    torch.manual_seed(0)
    method = L0Regularization(weight=0.2, ramp=RegulariserRamp(0, 0))
    module = attached(method)
    module.train()
    module.model(next(iter(loader()))[0])
    method.loss().backward()
    for layer in method.layers:
        la = layer.log_alpha.detach().double().requires_grad_()
        (0.2 * expected_l0(la)).backward()
        torch.testing.assert_close(layer.log_alpha.grad.double(), la.grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(
    "make, weight",
    [
        (lambda w: VariationalDropout(w, RegulariserRamp(0, 10), threshold=0.0), 1e-3),
        (lambda w: L0Regularization(w, RegulariserRamp(0, 10), grad_scale=100.0), 0.12),
    ],
    ids=["vd", "l0"],
)
def test_the_regulariser_is_what_prunes(make, weight):
    """Against a zero-weight control trained the same way, the regulariser prunes far more.
    (VD's weight is small: with SGD the KL's 1/theta gradient makes theta overshoot zero at
    large weights, which grows |theta| and prunes less.)"""
    sparsity = {}
    for w in (0.0, weight):
        pl.seed_everything(0)
        method = make(w)
        fit(method, steps=30, shuffle=False)
        sparsity[w] = method.mask_set.sparsity()
    assert sparsity[weight] > sparsity[0.0] + 0.3, sparsity


# -- the finish is the evaluation rule, no more, no less ---------------------------------------
@pytest.mark.parametrize(
    "make, rule",
    [
        (
            lambda: VariationalDropout(kl_weight=1e-3, ramp=RegulariserRamp(0, 10), threshold=0.0),
            lambda layer: layer.log_sigma2 - torch.log(layer.weight**2 + 1e-8) < 0.0,
        ),
        (
            lambda: L0Regularization(weight=0.12, ramp=RegulariserRamp(0, 10), grad_scale=100.0),
            lambda layer: (torch.sigmoid(layer.log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0, 1) > 0,
        ),
    ],
    ids=["vd", "l0"],
)
def test_final_masks_are_exactly_the_evaluation_rule_before_finalising(make, rule):
    """The rule and the evaluation output are captured after the last optimiser step, before the
    method's own hook of that step finalises; the masks must equal the rule both ways."""
    x = next(iter(loader(shuffle=False)))[0]
    captured = {}

    class BeforeTheFinish(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == trainer.max_steps:
                pl_module.eval()
                with torch.no_grad():
                    captured["output"] = pl_module.model(x)
                    captured["keep"] = [rule(layer).clone() for layer in method.layers]
                pl_module.train()

    pl.seed_everything(0)
    method = make()
    module, _ = fit(method, steps=30, before=[BeforeTheFinish()])
    masks = method.mask_set.masks()
    for entry, expected in zip(method.mask_set.entries, captured["keep"]):
        assert torch.equal(masks[entry.name], expected), entry.name
        assert bool((entry.weight[~expected] == 0).all())
    assert 0.2 < method.mask_set.sparsity() < 1.0
    module.eval()
    with torch.no_grad():  # the finalised plain weights give the evaluation output
        torch.testing.assert_close(module.model(x), captured["output"], rtol=1e-5, atol=1e-6)


# -- logging -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["variational_dropout", "l0"])
def test_a_run_logs_the_evaluation_rule_sparsity_and_reports_the_exported_models_accuracy(
    tmp_path, method
):
    run = tmp_path / "run"
    weight = "method.kl_weight=3e-5" if method == "variational_dropout" else "method.weight=3e-4"
    overrides = [*TINY, f"method={method}", "method.control=fixed", weight]
    logged_run = [o for o in overrides if o != "logger=none"]
    run_cli(run, *logged_run, "logger=csv", "trainer.log_every_n_steps=10")
    results = json.loads((run / "results.json").read_text())
    assert (results["method"], results["target_sparsity"]) == (method, 0.9)
    assert results["metrics"]["test/acc"] > 0.2  # 10 classes: chance is 0.1
    extra = "log_sigma2" if method == "variational_dropout" else "log_alpha"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, keep in torch.load(run / "masks.pt", weights_only=True).items():
        assert bool((ckpt[f"model.{name}"][~keep] == 0).all()), name
        assert f"model.{name.rpartition('.')[0]}.{extra}" in ckpt

    (metrics,) = run.rglob("metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("sparsity/global")]
    logged = {int(r["step"]): float(r["sparsity/global"]) for r in rows}
    during = [value for step, value in logged.items() if step < results["steps"]]
    assert len(during) >= 3 and max(during) > 0.1  # the rule's sparsity while training, not 0.0
    assert logged[results["steps"]] == pytest.approx(results["sparsity"], abs=1e-6)
    term = "train/kl" if method == "variational_dropout" else "train/l0"
    header = metrics.read_text().splitlines()[0].split(",")
    assert {term, "train/reg_loss", "train/task_loss"} <= set(header)

    # the exported plain model, loaded into the unmodified class, scores what results.json says
    paths = export(run)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides)
    model = instantiate(cfg.model)
    model.load_state_dict(torch.load(paths["dense"], weights_only=True))
    model.eval()
    data = instantiate(cfg.data)
    data.prepare_data()
    data.setup("test")
    correct = total = 0
    with torch.no_grad():
        for x, y in data.test_dataloader():
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    assert correct / total == pytest.approx(results["metrics"]["test/acc"], abs=0.5 / total)
