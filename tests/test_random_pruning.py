"""Gradual random pruning: exact per-layer targets, masks unlike magnitude pruning's, seeded
reproducibility, bad input, and one tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from sparse_lightning.callbacks import MagnitudePruning, RandomPruning
from sparse_lightning.errors import ConfigError
from sparse_lightning.schedules import PolynomialSchedule
from tests.conftest import TINY, run_cli
from tests.test_variational_dropout import fit

SCHEDULE = PolynomialSchedule(0.8, begin_step=2, end_step=12, frequency=5)


def masks_of(method) -> dict[str, torch.Tensor]:
    pl.seed_everything(0)
    fit(method, steps=15)
    return method.mask_set.masks()


def test_hits_each_layer_target_exactly_and_differs_from_magnitude():
    random_masks = masks_of(RandomPruning(SCHEDULE, seed=0))
    magnitude_masks = masks_of(MagnitudePruning(SCHEDULE))
    for name, mask in random_masks.items():
        assert mask.numel() - int(mask.sum()) == round(0.8 * mask.numel()), name
        overlap = (mask & magnitude_masks[name]).sum() / mask.sum()
        assert overlap < 0.6, name  # random keeps ~20 % of MP's survivors, not all of them


def test_same_seed_same_masks_other_seed_other_masks():
    first = masks_of(RandomPruning(SCHEDULE, seed=3))
    again = masks_of(RandomPruning(SCHEDULE, seed=3))
    other = masks_of(RandomPruning(SCHEDULE, seed=4))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_masks_depend_only_on_seed_and_step_and_never_revive():
    method = RandomPruning(SCHEDULE, seed=7)
    pl.seed_everything(0)
    fit(method, steps=15)
    before = method.mask_set.masks()
    method.update_masks(12)  # the same update again, e.g. on another rank or after a resume
    assert all(torch.equal(before[k], m) for k, m in method.mask_set.masks().items())
    scores = method.score([torch.empty(1000)], 12)[0]
    assert 0.4 < float(scores.mean()) < 0.6  # U(0, 1)
    assert torch.equal(scores, method.score([torch.empty(1000)], 12)[0])
    assert not torch.equal(scores, method.score([torch.empty(1000)], 7)[0])


@pytest.mark.parametrize("seed", [-1, 1.5, "a"])
def test_bad_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match="seed="):
        RandomPruning(SCHEDULE, seed=seed)


def test_end_to_end_run_reaches_the_target_and_beats_chance(tmp_path):
    run = tmp_path / "random"
    run_cli(run, "method=random", "sparsity=s50", *TINY)
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "random"
    assert results["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert results["metrics"]["test/acc"] > 0.2  # 10 classes: chance is 0.1
