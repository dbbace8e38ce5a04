"""SNIP-style pruning (callbacks/snip.py): gradual pruning scored by |w * grad| of the step just
taken, on a hand-counted toy and end to end as `method=snip`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparse_lightning.callbacks import GradualPruning, SnipScore
from sparse_lightning.schedules import PolynomialSchedule
from tests.conftest import TINY, run_cli


def test_the_score_is_the_weight_times_its_gradient_in_magnitude():
    weight = nn.Parameter(torch.tensor([1.0, -2.0, 3.0, 4.0]))
    weight.grad = torch.tensor([4.0, 1.0, -1.0, 0.1])
    (score,) = SnipScore()([weight], step=1)
    assert torch.equal(score, torch.tensor([4.0, 2.0, 3.0, 0.4]))


def test_pruning_drops_the_least_sensitive_weights_not_the_smallest():
    """|w * g| = [4, 2, 3, 0.4]: at 50 % SNIP keeps entries 0 and 2; magnitude would keep 2, 3."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    model[0].weight.grad = torch.tensor([[4.0, 1.0], [-1.0, 0.1]])
    method = GradualPruning(SnipScore(), PolynomialSchedule(0.5, 0, 1, 1))
    method.attach(model)
    method.update_masks(1)
    assert torch.equal(model[0].weight_mask, torch.tensor([[True, False], [True, False]]))
    assert torch.equal(model[0].weight.detach(), torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    assert method.method_name == "snip"


def test_a_weight_without_a_gradient_scores_zero():
    weight = nn.Parameter(torch.ones(3))
    (score,) = SnipScore()([weight], step=1)
    assert torch.equal(score, torch.zeros(3))


def test_method_snip_on_the_command_line_reaches_the_target(tmp_path):
    run = tmp_path / "snip"
    run_cli(run, "method=snip", *TINY)
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "snip"
    assert results["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert results["metrics"]["test/acc"] > 0.2  # above chance (10 classes)
