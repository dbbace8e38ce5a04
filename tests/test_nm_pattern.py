"""N:M structured sparsity (``method.pattern=2:4``): N kept of every M consecutive input weights.

Groups run along the input dimension: a Linear (out, in) along ``in``, a conv (out, in, k) along
the input channels at each kernel position, an embedding (num, dim) along ``dim``. Magnitude
(and random, SNIP) pruning protect the N highest-scoring live weights of every group along the
schedule, so no group falls below N and at the end every group holds exactly N; static masks are
N:M from step 0 and SET / RigL regrow inside each group what it lost. The pattern fixes the
sparsity at 1 - N/M; every contradicting setting is a ConfigError before training. Expected
masks here are typed by hand; group counts are taken with ``by_hand_counts``, written apart from
the implementation's ``patterns.grouped``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from sparse_lightning.budgets import ErdosRenyiBudget, UniformBudget
from sparse_lightning.callbacks import (
    GradientGrowth,
    GradualPruning,
    MagnitudeScore,
    RandomGrowth,
    RandomScore,
    SnipScore,
    SparseTraining,
)
from sparse_lightning.errors import ConfigError
from sparse_lightning.export import check_pattern, to_semi_structured
from sparse_lightning.patterns import NMPattern, parse_pattern
from sparse_lightning.schedules import DropFractionSchedule, PolynomialSchedule
from sparse_lightning.selection import LayerSelection
from tests.conftest import TINY, run_cli, run_in_process

END = 8
SCHEDULE = PolynomialSchedule(0.5, begin_step=0, end_step=END, frequency=2)  # updates 0,2,4,6,8
ONE_SHOT = PolynomialSchedule(0.5, begin_step=0, end_step=1, frequency=1)
DROP_GROW = DropFractionSchedule(begin_step=0, end_step=20, frequency=5, drop_fraction=0.3)


def by_hand_counts(mask: torch.Tensor, m: int = 4) -> torch.Tensor:
    """Kept entries per group of ``m``: (out, in, *k) -> (out, *k, in), then rows of ``m``."""
    if mask.dim() == 1:
        return mask.reshape(-1, m).sum(1)
    order = (0, *range(2, mask.dim()), 1)
    return mask.permute(*order).reshape(-1, m).sum(1)


class Fixed:
    """A score that returns the tensors it was given (a hand-made ranking)."""

    name = "fixed"

    def __init__(self, *scores: torch.Tensor) -> None:
        self.scores = scores

    def __call__(self, weights, step):
        return [s.clone() for s in self.scores]


class Mixed(nn.Module):
    """One of each prunable kind, every input dimension a multiple of 4 (never run forward)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 8)
        self.conv = nn.Conv1d(8, 4, 3)
        self.linear = nn.Linear(12, 4)


def linear_with(weight: list[list[float]]) -> nn.Module:
    model = nn.Sequential(nn.Linear(len(weight[0]), len(weight), bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(weight))
    return model


# -- parsing --------------------------------------------------------------------------------


def test_a_pattern_is_n_of_m_and_fixes_the_sparsity_at_1_minus_n_over_m():
    assert parse_pattern("2:4") == NMPattern(2, 4)
    assert parse_pattern(" 1:8 ") == NMPattern(1, 8)
    assert parse_pattern(None) is None
    assert NMPattern(2, 4).sparsity == 0.5 and NMPattern(1, 4).sparsity == 0.75
    assert str(NMPattern(2, 4)) == "2:4"


@pytest.mark.parametrize(
    "text, says",
    [
        ("3:2", "0 < N < M"),
        ("4:4", "0 < N < M"),
        ("0:4", "0 < N < M"),
        ("2-4", "not of the form N:M"),
        ("two:four", "not of the form N:M"),
        (124, "YAML"),  # an unquoted 2:4 in a YAML file: the base-60 integer 124
    ],
)
def test_a_bad_pattern_string_is_a_config_error_naming_it(text, says):
    with pytest.raises(ConfigError, match=says) as error:
        parse_pattern(text)
    assert repr(text) in str(error.value)


# -- the groups and the N kept in each ---------------------------------------------------------


def test_magnitude_keeps_the_two_largest_of_every_four_inputs_of_a_linear_weight():
    """Rows of 8 inputs = 2 groups each. Ties go to the lower position (row 1, group 1)."""
    model = linear_with(
        [
            [0.1, -5.0, 3.0, 0.2, 0.4, 0.3, -0.2, 0.1],
            [9.0, 8.0, -7.0, 6.0, 1.0, -1.0, 1.0, 0.5],
        ]
    )
    method = GradualPruning(MagnitudeScore(), ONE_SHOT, pattern="2:4")
    method.attach(model)
    method.update_masks(1)
    expected = [[0, 1, 1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 1, 0, 0]]
    assert model[0].weight_mask.tolist() == [[bool(x) for x in row] for row in expected]


def test_conv_groups_run_along_input_channels_at_each_kernel_position():
    """Conv1d(4 in, 1 out, kernel 2): tap 0 holds |w| 1, 2, 3, 4 over the input channels,
    tap 1 holds 4, 3, 2, 1. Grouping along the flat (in * k) row would instead see
    [1, 4, 2, 3] and [3, 2, 4, 1]."""
    model = nn.Sequential(nn.Conv1d(4, 1, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0]]]))
    method = GradualPruning(MagnitudeScore(), ONE_SHOT, pattern="2:4")
    method.attach(model)
    method.update_masks(1)
    expected = [[[False, True], [False, True], [True, False], [True, False]]]
    assert model[0].weight_mask.tolist() == expected


def test_embedding_groups_run_along_the_vector_dimension():
    model = nn.Sequential(nn.Embedding(2, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5, -2.0, 0.1], [0.0, 3.0, 0.2, -4.0]]))
    method = GradualPruning(MagnitudeScore(), ONE_SHOT, pattern="2:4")
    method.attach(model)
    method.update_masks(1)
    assert model[0].weight_mask.tolist() == [[True, False, True, False], [False, True, False, True]]


def test_a_pruned_entry_is_never_revived_even_if_it_scores_highest():
    """Group 0 = [pruned, a, b, c]: the pruned entry scores 9, the live ones 1, 2, 3; at 2:4
    the kept two are the live 2 and 3, never the pruned one."""
    model = linear_with([[1.0, 1.0, 1.0, 1.0]])
    method = GradualPruning(Fixed(torch.tensor([[9.0, 1.0, 2.0, 3.0]])), ONE_SHOT, pattern="2:4")
    method.attach(model)
    method.mask_set.set_masks({"0.weight": torch.tensor([[False, True, True, True]])})
    method.update_masks(1)
    assert model[0].weight_mask.tolist() == [[False, False, True, True]]


def test_a_group_that_entered_with_fewer_than_n_live_is_not_refilled_from_pruned_entries():
    """A mask from elsewhere: group 0 has 1 live entry (scores 9, 8, 7 pruned), group 1 all 4.
    Group 0 keeps its one; the 4 kept at 50 % are it and group 1's top three."""
    model = linear_with([[1.0] * 8])
    scores = torch.tensor([[9.0, 8.0, 1.0, 7.0, 4.0, 3.0, 2.0, 1.0]])
    method = GradualPruning(Fixed(scores), ONE_SHOT, pattern="2:4")
    method.attach(model)
    method.mask_set.set_masks({"0.weight": torch.tensor([[0, 0, 1, 0, 1, 1, 1, 1]]).bool()})
    method.update_masks(1)
    assert model[0].weight_mask.tolist() == [[False, False, True, False, True, True, True, False]]


def test_a_schedule_starting_above_1_minus_n_over_m_still_leaves_n_in_every_group():
    """initial_sparsity 0.7 > 0.5: the pattern's N per group wins over the schedule's count."""
    model = linear_with([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]])
    schedule = PolynomialSchedule(0.5, begin_step=0, end_step=4, frequency=2, initial_sparsity=0.7)
    method = GradualPruning(MagnitudeScore(), schedule, pattern="2:4")
    method.attach(model)
    method.update_masks(0)
    assert model[0].weight_mask.tolist() == [[True, True, False, False, False, False, True, True]]


@pytest.mark.parametrize("score", [MagnitudeScore(), RandomScore(seed=1), SnipScore()])
def test_along_the_schedule_no_group_falls_below_n_and_at_the_end_every_group_has_exactly_n(
    score,
):
    """Weights and gradients change between updates as training would change them; the kept
    count follows the schedule exactly: numel - round(s_t numel)."""
    torch.manual_seed(0)
    model = Mixed()
    method = GradualPruning(score, SCHEDULE, pattern="2:4")
    method.attach(model)
    before = {e.name: e.mask.clone() for e in method.mask_set.entries}
    for step in range(0, END + 1, 2):
        for entry in method.mask_set.entries:
            with torch.no_grad():
                entry.weight.add_(torch.randn_like(entry.weight)).mul_(entry.mask)
            entry.weight.grad = torch.randn_like(entry.weight)
        method.update_masks(step)
        s_t = SCHEDULE.sparsity_at(step)
        for entry in method.mask_set.entries:
            mask, numel = entry.mask, entry.mask.numel()
            assert not bool((mask & ~before[entry.name]).any()), (step, entry.name)  # shrinks
            assert int(mask.sum()) == numel - round(s_t * numel), (step, entry.name)
            counts = by_hand_counts(mask)
            assert int(counts.min()) >= 2, (step, entry.name)
            before[entry.name] = mask.clone()
    for entry in method.mask_set.entries:
        assert by_hand_counts(entry.mask).tolist() == [2] * (entry.mask.numel() // 4), entry.name
    assert method.record() == {"budget": "uniform", "pattern": "2:4"}


# -- static, SET, RigL --------------------------------------------------------------------------


def test_static_masks_are_random_n_of_m_from_the_start_and_differ_by_seed():
    masks = {}
    for seed in (0, 1):
        model = Mixed()
        SparseTraining(0.5, seed=seed, pattern="2:4").attach(model)
        masks[seed] = [model.embed.weight_mask, model.conv.weight_mask, model.linear.weight_mask]
        for mask in masks[seed]:
            assert by_hand_counts(mask).tolist() == [2] * (mask.numel() // 4)
    assert any(not torch.equal(a, b) for a, b in zip(masks[0], masks[1]))
    again = Mixed()
    SparseTraining(0.5, seed=0, pattern="2:4").attach(again)
    assert torch.equal(again.conv.weight_mask, masks[0][1])


@pytest.mark.parametrize("grow", [RandomGrowth(seed=3), GradientGrowth()], ids=["set", "rigl"])
def test_every_group_holds_exactly_n_after_every_drop_and_grow_update(grow):
    torch.manual_seed(0)
    model = Mixed()
    method = SparseTraining(0.5, seed=3, grow=grow, schedule=DROP_GROW, pattern="2:4")
    method.attach(model)
    changed = 0
    for step in (0, 5, 10, 15):
        previous = [e.mask.clone() for e in method.mask_set.entries]
        for entry in method.mask_set.entries:
            with torch.no_grad():
                entry.weight.add_(torch.randn_like(entry.weight)).mul_(entry.mask)
            entry.weight.grad = torch.randn_like(entry.weight)
        method.update_masks(step)
        for entry, old in zip(method.mask_set.entries, previous):
            assert by_hand_counts(entry.mask).tolist() == [2] * (entry.mask.numel() // 4)
            live = int(old.sum())
            dropped = int((old & ~entry.mask).sum())
            assert dropped <= int(live * DROP_GROW.fraction_at(step))
            changed += dropped
    assert changed > 0
    assert method.record() == {"budget": "uniform", "pattern": "2:4"}


def test_rigl_regrows_in_each_group_what_it_lost_where_its_gradient_is_largest():
    """Live [a, b, -, - | c, d, -, -] with |w| 0.1, 2 | 3, 0.2; drop floor(0.5 * 4) = 2: the
    0.1 and the 0.2, one from each group. Gradients |g| [0, 0, 5, 4 | 0, 0, 1, 1]: unstructured
    RigL would grow 5 and 4, both in group 0 (3 kept there); per group, group 0 grows the 5 and
    group 1 the first of its tied 1s."""
    model = linear_with([[0.1, 2.0, 0.0, 0.0, 3.0, 0.2, 0.0, 0.0]])
    schedule = DropFractionSchedule(0, 10, 1, 0.5, "constant")
    method = SparseTraining(0.5, grow=GradientGrowth(), schedule=schedule, pattern="2:4")
    method.attach(model)
    method.mask_set.set_masks({"0.weight": torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0]]).bool()})
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, 2.0, 0.0, 0.0, 3.0, 0.2, 0.0, 0.0]]))
    model[0].weight.grad = torch.tensor([[0.0, 0.0, 5.0, -4.0, 0.0, 0.0, 1.0, -1.0]])
    method.update_masks(1)
    expected = [[False, True, True, False, True, False, True, False]]
    assert model[0].weight_mask.tolist() == expected
    assert model[0].weight[0, 2] == 0.0 and model[0].weight[0, 6] == 0.0  # new: start at zero


# -- what the pattern refuses -------------------------------------------------------------------


def gradual(**kwargs):
    kwargs.setdefault("pattern", "2:4")
    schedule = PolynomialSchedule(kwargs.pop("target", 0.5), 0, END, 2)
    return GradualPruning(MagnitudeScore(), schedule, **kwargs)


def test_a_target_other_than_1_minus_n_over_m_is_a_config_error_naming_both_and_the_fix():
    with pytest.raises(ConfigError) as error:
        gradual(target=0.9)
    message = str(error.value)
    assert "0.5" in message and "sparsity.target=0.9" in message
    assert "use sparsity.target=0.5" in message
    with pytest.raises(ConfigError, match=r"use sparsity.target=0.75"):
        SparseTraining(0.5, pattern="1:4")


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"budget": ErdosRenyiBudget()}, "budget=erk"),
        ({"budget": UniformBudget({"0.weight": 0.3})}, "layer_sparsity"),
        ({"scope": "global"}, "scope=global"),
    ],
)
def test_other_budgets_layer_targets_and_global_scope_are_refused_with_a_pattern(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        gradual(**kwargs)
    assert gradual(**kwargs, pattern=None).pattern is None  # fine without one


def test_a_layer_whose_input_dimension_m_does_not_divide_is_refused_naming_it_and_the_fix():
    """A 1-input-channel first conv (cnn1d's) cannot hold 2:4; nothing is masked yet."""
    model = nn.Sequential(nn.Conv1d(1, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    for method in (gradual(), SparseTraining(0.5, pattern="2:4")):
        with pytest.raises(ConfigError) as error:
            method.attach(model)
        message = str(error.value)
        assert "0.weight (8, 1, 3) has 1" in message
        assert "method.selection.exclude" in message and "first_layer_dense=true" in message
        assert "2.weight" not in message
        assert not hasattr(model[0], "weight_mask")
    dense_first = gradual(selection=LayerSelection(first_layer_dense=True))
    assert dense_first.attach(model).names == ["2.weight"]


# -- export --------------------------------------------------------------------------------


def test_check_pattern_counts_masks_exactly_and_weights_at_most():
    good = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]]).bool()
    check_pattern({"w": good}, 2, 4)
    with pytest.raises(ConfigError, match=r"w \(1, 8\) breaks the 2:4 pattern: group 1"):
        check_pattern({"w": torch.tensor([[1, 1, 0, 0, 0, 1, 0, 0]]).bool()}, 2, 4)
    # a kept weight that is exactly 0.0: one non-zero in the group is fine for values
    check_pattern({"w": torch.tensor([[0.5, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0]])}, 2, 4)
    with pytest.raises(ConfigError, match="3 non-zeros"):
        check_pattern({"w": torch.tensor([[0.5, 1.0, 2.0, 0.0]])}, 2, 4)


def test_to_semi_structured_refuses_a_cpu_or_float32_model_with_one_clear_error():
    model = nn.Sequential(nn.Linear(64, 32))
    with pytest.raises(ValueError, match="CUDA device in float16 or bfloat16"):
        to_semi_structured(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="semi-structured kernels need CUDA")
def test_to_semi_structured_compresses_a_2_4_linear_and_computes_the_same_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 30)).cuda().half()
    with torch.no_grad():  # 2:4 by hand in the first layer: keep inputs 0 and 1 of every 4
        model[0].weight.view(32, 16, 4)[:, :, 2:] = 0
    x = torch.randn(64, 64, device="cuda", dtype=torch.half)
    expected = model(x)
    to_semi_structured(model)
    assert isinstance(model[0].weight.data, torch.sparse.SparseSemiStructuredTensor)
    assert not isinstance(model[1].weight.data, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(model(x), expected, rtol=1e-2, atol=1e-2)


# -- the command line -----------------------------------------------------------------------


def test_a_magnitude_run_with_2_4_ends_with_every_group_of_four_at_two_and_exports(tmp_path):
    run_cli(
        tmp_path,
        "method=magnitude",
        "method.pattern=2:4",
        "sparsity=s50",
        "method.selection.first_layer_dense=true",
        *TINY,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method_details"] == {"budget": "uniform", "pattern": "2:4"}
    assert results["sparsity"] == 0.5
    masks = torch.load(tmp_path / "masks.pt")
    assert set(masks) == {"3.weight", "6.weight", "10.weight", "12.weight"}
    for name, mask in masks.items():
        assert by_hand_counts(mask).tolist() == [2] * (mask.numel() // 4), name
    result = subprocess.run(
        [sys.executable, "-m", "sparse_lightning.export", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pattern 2:4: every group of 4 input weights keeps exactly 2" in result.stdout
    masks["10.weight"][0, :4] = True  # 4 of 4 kept in one group: export refuses the run
    torch.save(masks, tmp_path / "masks.pt")
    result = subprocess.run(
        [sys.executable, "-m", "sparse_lightning.export", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "10.weight (256, 640) breaks the 2:4 pattern: group 0" in result.stderr


def test_a_rigl_run_with_2_4_keeps_every_group_of_four_at_two(tmp_path):
    run_cli(
        tmp_path,
        "method=rigl",
        "method.pattern=2:4",
        "sparsity=s50",
        "method.selection.first_layer_dense=true",
        *TINY,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "rigl"
    assert results["method_details"] == {"budget": "uniform", "pattern": "2:4"}
    for name, mask in torch.load(tmp_path / "masks.pt").items():
        assert by_hand_counts(mask).tolist() == [2] * (mask.numel() // 4), name


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["method.pattern=2:4", "sparsity=s50"], "0.weight (32, 1, 5) has 1"),  # 1-channel conv
        (["method.pattern=2:4", "method.selection.first_layer_dense=true"], "sparsity.target=0.5"),
        (["method.pattern=3:2", "sparsity=s50"], "0 < N < M"),
        (["method=static", "method.pattern=2:4", "sparsity=s50", "budget=erk"], "budget=erk"),
    ],
)
def test_bad_pattern_settings_stop_the_cli_with_one_error_line(tmp_path, capsys, overrides, says):
    code = run_in_process(tmp_path, *overrides, *TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sparse-train: error: ") and says in err[0]
