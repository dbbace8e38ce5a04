"""Layer budgets share a global target out among the selected weights: uniform (the paper),
Erdos-Renyi and Erdos-Renyi-Kernel (RigL), hand-counted on toy shapes, and end to end through
`budget=` on the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparse_lightning.budgets import ErdosRenyiBudget, UniformBudget
from sparse_lightning.callbacks import VariationalDropout
from sparse_lightning.errors import ConfigError
from sparse_lightning.schedules import RegulariserRamp
from tests.conftest import TINY, run_cli


def kept(shapes, targets) -> float:
    """Entries kept over all weights, by each target."""
    return sum(math.prod(s) * (1 - targets[n]) for n, s in shapes.items())


def test_uniform_gives_every_weight_the_global_target_except_named_ones():
    shapes = {"a.weight": (4, 2), "b.weight": (10, 10)}
    assert UniformBudget().targets(shapes, 0.7) == {"a.weight": 0.7, "b.weight": 0.7}
    budget = UniformBudget({"a.*": 0.2})
    assert budget.targets(shapes, 0.7) == {"a.weight": 0.2, "b.weight": 0.7}
    assert budget.pooled(list(shapes)) == ["b.weight"]


def test_erdos_renyi_makes_a_layer_dense_when_its_density_would_exceed_one():
    """A (4x2, 8 entries): (4+2)/8 = 0.75; B (10x10, 100 entries): 20/100 = 0.2. At s = 0.5,
    eps = (4 + 50) / (0.75*8 + 0.2*100) = 54/26: A's density 1.56 > 1, so A is dense; then
    eps = (50 - 4) / 20 = 2.3 and B's density 0.46, sparsity 0.54. Kept: 8 + 46 = 54 of 108."""
    shapes = {"a.weight": (4, 2), "b.weight": (10, 10)}
    for kernel in (True, False):  # 2-D weights: ER and ERK agree
        targets = ErdosRenyiBudget(kernel=kernel).targets(shapes, 0.5)
        assert targets["a.weight"] == 0.0
        assert targets["b.weight"] == pytest.approx(0.54)
        assert kept(shapes, targets) == pytest.approx(54)


def test_the_kernel_variant_counts_kernel_dimensions_and_plain_er_does_not():
    """Conv (out 4, in 2, k 3) beside a linear (out 6, in 12): ERK scales 9/24 and 18/72,
    ER (2+4)/8 and 18/72. At s = 0.8 neither overflows: eps = (1 - 0.8) * N / sum(scale * N)
    with N = 24 + 72 entries, z = floor(0.8 N) per weight (RigL's count)."""
    shapes = {"conv.weight": (4, 2, 3), "fc.weight": (6, 12)}
    kept_total = (24 - math.floor(0.8 * 24)) + (72 - math.floor(0.8 * 72))
    for kernel, conv_scale in ((True, 9 / 24), (False, 6 / 8)):
        eps = kept_total / (conv_scale * 24 + 18 / 72 * 72)
        targets = ErdosRenyiBudget(kernel=kernel).targets(shapes, 0.8)
        assert targets["conv.weight"] == pytest.approx(1 - eps * conv_scale)
        assert targets["fc.weight"] == pytest.approx(1 - eps * 18 / 72)
    erk = ErdosRenyiBudget(kernel=True).targets(shapes, 0.8)
    er = ErdosRenyiBudget(kernel=False).targets(shapes, 0.8)
    assert erk["conv.weight"] != pytest.approx(er["conv.weight"])


def test_erk_keeps_the_uniform_count_over_the_free_weights_and_fixes_named_ones():
    shapes = {
        "0.weight": (16, 1, 5),
        "3.weight": (32, 16, 5),
        "6.weight": (64, 512),
        "8.weight": (10, 64),
    }
    targets = ErdosRenyiBudget().targets(shapes, 0.9)
    assert all(0.0 <= t < 1.0 for t in targets.values())
    total = sum(math.prod(s) for s in shapes.values())
    uniform_kept = sum(math.prod(s) - math.floor(0.9 * math.prod(s)) for s in shapes.values())
    assert kept(shapes, targets) == pytest.approx(uniform_kept)
    assert 1 - kept(shapes, targets) / total == pytest.approx(0.9, abs=1e-3)
    assert targets["0.weight"] < targets["6.weight"]  # the small first layer keeps more
    fixed = ErdosRenyiBudget(layer_sparsity={"8.*": 0.5}).targets(shapes, 0.9)
    assert fixed["8.weight"] == 0.5
    assert ErdosRenyiBudget().pooled(list(shapes)) == []


def test_a_regularised_method_refuses_a_non_uniform_budget_in_one_line():
    with pytest.raises(ConfigError, match="budget=erk does not apply to variational_dropout"):
        VariationalDropout(1e-3, RegulariserRamp(0, 10), budget=ErdosRenyiBudget())


def test_budget_erk_on_the_command_line_prunes_each_layer_to_its_erk_target(tmp_path):
    """The wiring: `budget=erk` reaches the method, each layer ends at its ERK target (the
    formula is checked by hand above) and the selected weights together at the global one."""
    run = tmp_path / "erk"
    run_cli(run, "budget=erk", *TINY)
    results = json.loads((run / "results.json").read_text())
    shapes = {name: tuple(mask.shape) for name, mask in torch.load(run / "masks.pt").items()}
    expected = ErdosRenyiBudget().targets(shapes, 0.9)
    for name, sparsity in results["layer_sparsity"].items():
        assert abs(sparsity - expected[name]) * math.prod(shapes[name]) <= 0.5 + 1e-9, name
    assert len({round(v, 2) for v in results["layer_sparsity"].values()}) > 1
    assert results["sparsity"] == pytest.approx(0.9, abs=1e-3)
