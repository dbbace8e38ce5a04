"""Sparse training from scratch (callbacks/sparse_training.py): static, SET and RigL keep every
tensor at exactly its budget's count from step 0; each update drops and grows the same number
floor(f(t) k); RigL grows exactly where the gradient is largest; grown weights and their optimiser
state start at zero; runs resume exactly; a RigL mask is retrained by the lottery variants."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from sparse_lightning.budgets import ErdosRenyiBudget
from sparse_lightning.callbacks import GradientGrowth, RandomGrowth, SparseTraining
from sparse_lightning.errors import ConfigError
from sparse_lightning.pruning import n_to_keep
from sparse_lightning.schedules import DropFractionSchedule
from tests.conftest import TINY, run_cli
from tests.toy import fit

STEPS = 30
SCHEDULE = DropFractionSchedule(begin_step=0, end_step=20, frequency=5, drop_fraction=0.3)


def test_the_drop_fraction_decays_as_rigls_cosine():
    """f(t) = 0.3 / 2 (1 + cos(pi min(t, 20) / 20)), typed from TF's cosine_decay."""
    for step, expected in (
        (0, 0.3),
        (5, 0.15 * (1 + math.cos(math.pi / 4))),
        (10, 0.15),
        (20, 0.0),
    ):
        assert SCHEDULE.fraction_at(step) == pytest.approx(expected)
    assert [t for t in range(30) if SCHEDULE.is_update_step(t)] == [0, 5, 10, 15, 20]
    constant = DropFractionSchedule(2, 20, 6, drop_fraction=0.1, decay="constant")
    assert constant.fraction_at(17) == 0.1
    assert [t for t in range(30) if constant.is_update_step(t)] == [2, 8, 14, 20]


class MaskHistory(pl.Callback):
    """The method's masks after every step (it runs after the method, list order)."""

    def __init__(self, method: SparseTraining) -> None:
        self.method, self.masks = method, []

    def on_train_batch_end(self, trainer, *args):
        self.masks.append((trainer.global_step, self.method.mask_set.masks()))


def trained(grow, steps: int = STEPS, **kwargs):
    pl.seed_everything(0)
    method = SparseTraining(0.8, seed=3, grow=grow, schedule=SCHEDULE if grow else None, **kwargs)
    history = MaskHistory(method)
    fit(method, steps=steps, callbacks=[history])
    return method, history.masks


@pytest.mark.parametrize(
    "grow", [None, RandomGrowth(seed=3), GradientGrowth()], ids=["static", "set", "rigl"]
)
def test_every_tensor_keeps_exactly_its_count_after_every_step(grow):
    method, history = trained(grow)
    for step, masks in history:
        for name, mask in masks.items():
            assert int(mask.sum()) == n_to_keep(mask.numel(), 0.8), (step, name)
    changed = [step for (step, a), (_, b) in zip(history, history[1:]) if any(
        not torch.equal(a[n], b[n]) for n in a)]  # fmt: skip
    if grow is None:
        assert changed == []
    else:  # masks change only on update steps (the step after which they were recorded)
        assert changed and all(SCHEDULE.is_update_step(step + 1) for step in changed)


@pytest.mark.parametrize("grow", [RandomGrowth(seed=3), GradientGrowth()], ids=["set", "rigl"])
def test_each_update_drops_and_grows_floor_f_times_k_weights(grow):
    _, history = trained(grow)
    by_step = dict(history)
    for step in (5, 10, 15):
        for name, before in by_step[step - 1].items():
            after = by_step[step][name]
            live = n_to_keep(before.numel(), 0.8)
            expected = int(live * SCHEDULE.fraction_at(step))
            dropped, grown = int((before & ~after).sum()), int((after & ~before).sum())
            assert dropped == grown <= expected, (step, name)  # regrowing a dropped one counts 0


def test_rigl_grows_exactly_where_an_injected_gradient_is_largest():
    """One linear layer, 12 weights, 4 live (s = 2/3). Drop floor(0.5 * 4) = 2 of the smallest
    |w|, then grow 2 where |grad| is largest among the other 10."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    method = SparseTraining(
        2 / 3, grow=GradientGrowth(), schedule=DropFractionSchedule(0, 10, 1, 0.5, "constant")
    )
    method.attach(model)
    weight = model[0].weight
    live = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    method.mask_set.set_masks({"0.weight": live})
    with torch.no_grad():
        weight.copy_(torch.tensor([[0.1, 2.0, 0, 0], [3.0, 0.2, 0, 0], [0, 0, 0, 0]]))
    weight.grad = torch.tensor([[9.0, 0, 0.5, 7.0], [0, 0, 0, 0.1], [0, -8.0, 0, 0]])
    method.update_masks(1)
    # dropped: 0.1 and 0.2; kept: 2.0 and 3.0; the largest |grad| among the other 10 entries
    # are 9 at (0, 0) (just dropped: regrown with its value) and 8 at (2, 1) (new: zero)
    expected = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(model[0].weight_mask, expected)
    assert float(model[0].weight[0, 0]) == pytest.approx(
        0.1
    )  # dropped and regrown: keeps its value
    assert float(model[0].weight[2, 1]) == 0.0  # new connection: starts at zero


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_grown_weights_and_their_optimiser_state_start_at_zero(optimizer):
    model = nn.Sequential(nn.Linear(6, 5, bias=False))
    method = SparseTraining(
        0.5, seed=1, grow=RandomGrowth(seed=1),
        schedule=DropFractionSchedule(0, 10, 1, 0.5, "constant"),
    )  # fmt: skip
    method.attach(model)
    weight = model[0].weight
    opt = (
        torch.optim.SGD([weight], lr=0.1, momentum=0.9)
        if optimizer == "sgd"
        else torch.optim.Adam([weight], lr=0.1)
    )
    for _ in range(3):  # every entry gathers state (the gradient is dense)
        opt.zero_grad()
        model(torch.randn(8, 6)).square().sum().backward()
        opt.step()
        method.mask_set.apply_()
    before = weight.detach().clone(), model[0].weight_mask.clone()
    method.update_masks(1, [opt])
    new = model[0].weight_mask & ~before[1]
    assert int(new.sum()) > 0
    assert bool((weight[new] == 0).all())
    states = [
        v for v in opt.state[weight].values() if torch.is_tensor(v) and v.shape == weight.shape
    ]
    assert states and all(bool((s[new] == 0).all()) for s in states)
    old = model[0].weight_mask & before[1]
    assert all(bool((s[old] != 0).any()) for s in states)  # the others keep theirs


def test_a_resumed_rigl_run_ends_exactly_as_an_uninterrupted_one(tmp_path):
    every_8 = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}"
    )
    make = lambda: SparseTraining(0.8, seed=3, grow=GradientGrowth(), schedule=SCHEDULE)  # noqa: E731
    pl.seed_everything(0)
    uninterrupted, _ = fit(make(), steps=24, callbacks=[every_8], shuffle=False)
    pl.seed_everything(1)
    resumed, _ = fit(make(), steps=24, ckpt_path=tmp_path / "step=8.ckpt", shuffle=False)
    expected = uninterrupted.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_half_a_drop_and_grow_rule_is_a_config_error():
    with pytest.raises(ConfigError, match="needs both a grow rule and a schedule"):
        SparseTraining(0.9, grow=GradientGrowth())


def test_rigl_on_an_erk_budget_from_the_command_line_and_its_mask_retrained(tmp_path):
    """budget=erk reaches the global target with per-layer ERK counts; the learned mask is a
    mask like any other: init=lottery retrains it with its own init."""
    source = tmp_path / "rigl"
    run_cli(source, "method=rigl", "budget=erk", *TINY)
    results = json.loads((source / "results.json").read_text())
    assert results["method"] == "rigl" and results["sparsity"] == pytest.approx(0.9, abs=1e-3)
    masks = torch.load(source / "masks.pt")
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    for name, target in ErdosRenyiBudget().targets(shapes, 0.9).items():
        assert int(masks[name].sum()) == n_to_keep(masks[name].numel(), target), name
    retrained = tmp_path / "lottery"
    run_cli(retrained, "init=lottery", f"init.mask_from='{source}'", *TINY)
    again = torch.load(retrained / "masks.pt")
    assert all(torch.equal(again[name], masks[name]) for name in masks)
