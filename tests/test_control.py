"""`method.control=target`: the regulariser weight of VD / l0 is a multiplier moved by dual ascent
so that the evaluation rule's sparsity follows the schedule, and the target is met exactly at the
end by ranking. On a toy plant with a known fixed point, on a real Trainer (exact finish, exact
resume), and end to end on a model the project never tuned for."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch

from sparse_lightning.callbacks import L0Regularization, VariationalDropout
from sparse_lightning.control import SparsityController
from sparse_lightning.errors import ConfigError
from sparse_lightning.layers import variational_dropout as vd
from sparse_lightning.schedules import PolynomialSchedule, RegulariserRamp
from tests.conftest import TINY, run_cli
from tests.toy import fit


def test_the_multiplier_converges_where_the_plant_meets_the_target():
    """Plant: sparsity = lambda / (1 + lambda). Target 0.7 from step 0: the fixed point is
    lambda* = 0.7 / 0.3, which dual ascent in log space reaches from a tiny start."""
    controller = SparsityController(PolynomialSchedule(0.7, 0, 1, 1), every_n_steps=1, rate=2.0)
    controller.start(num_weights=1000, device=torch.device("cpu"))
    assert float(controller.weight()) == pytest.approx(1e-3 / 1000)
    for step in range(1, 400):
        weight = controller.weight().double()
        controller.update(step, weight / (1 + weight))
    assert float(controller.weight()) == pytest.approx(0.7 / 0.3, rel=1e-3)


def test_the_multiplier_falls_while_the_rule_prunes_more_than_the_schedule():
    controller = SparsityController(PolynomialSchedule(0.9, 100, 200, 10), every_n_steps=10)
    controller.start(num_weights=10, device=torch.device("cpu"))
    before = float(controller.log_weight)
    controller.update(10, torch.tensor(0.5))  # schedule: 0 before step 100
    assert float(controller.log_weight) == pytest.approx(before - 2.0 * 0.5)
    assert not controller.due(10) and controller.due(20) and not controller.due(25)


def controlled(method: str, target: float, steps: int = 40):
    """A controlled method on the toy model. Forty steps are too few for the rule to track the
    schedule (the ranking then settles most of the target), so the rate is kept low enough
    that the multiplier cannot run away in that time."""
    controller = SparsityController(
        PolynomialSchedule(target, 4, steps // 2, 2), every_n_steps=2, rate=0.5
    )
    common = dict(target_sparsity=target, control="target", controller=controller)
    if method == "variational_dropout":
        return VariationalDropout(1e-3, RegulariserRamp(0, 10), **common)
    return L0Regularization(1e-3, RegulariserRamp(0, 10), grad_scale=100.0, **common)


@pytest.mark.parametrize("method", ["variational_dropout", "l0"])
@pytest.mark.parametrize("target", [0.5, 0.9])
def test_the_target_is_met_exactly_and_the_rule_agrees_with_the_masks(method, target):
    pl.seed_everything(0)
    callback = controlled(method, target)
    module, _ = fit(callback, steps=40)
    masks = [entry.mask for entry in callback.mask_set.entries]
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == total - round(target * total)
    for layer, mask in zip(callback.layers, masks):
        assert torch.equal(layer.eval_keep(), mask)  # evaluation and export see the same weights
        assert bool((layer.weight[~mask] == 0).all())
    assert callback.record()["control"] == "target"


def test_the_exact_finish_prunes_the_highest_log_alpha_of_all_layers_together():
    """VD: the weights pruned are the round(s N) with the highest log_alpha over all layers,
    computed here from theta and log_sigma2 directly."""
    pl.seed_everything(0)
    callback = controlled("variational_dropout", 0.7, steps=20)
    seen = {}

    class LastStep(pl.Callback):  # runs before the method's hook, which finalises
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == trainer.max_steps:
                assert callback.mask_set.sparsity() == 0.0
                seen["alphas"] = torch.cat(
                    [
                        vd.log_alpha(x.weight, x.log_sigma2, clip=False).reshape(-1)
                        for x in callback.layers
                    ]
                )

    fit(callback, steps=20, before=[LastStep()])
    alphas = seen["alphas"]
    n_pruned = round(0.7 * alphas.numel())
    threshold = alphas.sort(descending=True).values[n_pruned - 1]
    pruned = torch.cat([~e.mask.reshape(-1) for e in callback.mask_set.entries])
    assert int(pruned.sum()) == n_pruned
    assert bool((alphas[pruned] >= threshold).all()) and bool((alphas[~pruned] <= threshold).all())


@pytest.mark.parametrize("method", ["variational_dropout", "l0"])
def test_a_resumed_controlled_run_ends_exactly_as_an_uninterrupted_one(tmp_path, method):
    every_8 = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}"
    )
    pl.seed_everything(0)
    first = controlled(method, 0.8, steps=16)
    uninterrupted, _ = fit(first, steps=16, callbacks=[every_8], shuffle=False)
    checkpoint = torch.load(tmp_path / "step=8.ckpt", weights_only=False)
    saved = next(v for k, v in checkpoint["callbacks"].items() if "controller" in v)
    assert saved["controller"]["last_step"] == 8
    pl.seed_everything(1)
    second = controlled(method, 0.8, steps=16)
    resumed, _ = fit(second, steps=16, ckpt_path=tmp_path / "step=8.ckpt", shuffle=False)
    assert torch.equal(second.controller.log_weight, first.controller.log_weight)
    expected = uninterrupted.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(control="adaptive"), "control='adaptive' is not one of target, fixed"),
        (dict(control="target"), "control='target' needs a controller"),
    ],
)
def test_a_bad_control_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VariationalDropout(1e-3, RegulariserRamp(0, 10), **kwargs)


@pytest.mark.parametrize("kwargs", [dict(every_n_steps=0), dict(rate=-1.0), dict(rate=math.inf)])
def test_bad_controller_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        SparsityController(PolynomialSchedule(0.9, 0, 10, 1), **kwargs)


@pytest.mark.parametrize("method", ["variational_dropout", "l0"])
def test_a_model_never_tuned_for_reaches_the_requested_sparsity(tmp_path, method):
    """A 3-layer MLP from a config outside the repo, with no settings of its own: the run
    reaches exactly 0.8 and logs the multiplier and the rule's sparsity on the way."""
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "mlp.yaml").write_text(
        "_target_: torch.nn.Sequential\n"
        "_args_:\n"
        "  - {_target_: torch.nn.Flatten}\n"
        "  - {_target_: torchvision.ops.MLP, in_channels: 40, hidden_channels: [64, 64, 10]}\n"
    )
    run = tmp_path / method
    run_cli(
        run, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=mlp", f"method={method}",
        "sparsity=s80", *[o for o in TINY if o != "logger=none"], "logger=csv",
        "trainer.log_every_n_steps=10",
    )  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    assert results["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert results["method_details"]["control"] == "target"
    metrics = next(run.rglob("metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    assert "sparsity/reg_weight" in header and "sparsity/global" in header


def test_where_the_rule_prunes_more_than_the_target_the_ranking_keeps_the_rest():
    """A VD threshold of -5 prunes nearly every weight by the rule; the finish keeps exactly half,
    and moves log_sigma2 so that the evaluation rule keeps those too (every use of the weight
    then computes what the exported plain model computes)."""
    pl.seed_everything(0)
    controller = SparsityController(PolynomialSchedule(0.5, 4, 10, 2), every_n_steps=2, rate=0.5)
    callback = VariationalDropout(
        1e-3, RegulariserRamp(0, 10), threshold=-5.0, target_sparsity=0.5,
        control="target", controller=controller,
    )  # fmt: skip
    fit(callback, steps=20)
    total = sum(e.mask.numel() for e in callback.mask_set.entries)
    assert sum(int(e.mask.sum()) for e in callback.mask_set.entries) == total - round(0.5 * total)
    for layer, entry in zip(callback.layers, callback.mask_set.entries):
        assert torch.equal(layer.eval_keep(), entry.mask)
