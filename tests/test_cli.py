"""The real entry point, as a user runs it: outputs of a run and the summary it prints."""

import json

import pytest
import torch

from tests.conftest import TINY, run_cli


@pytest.fixture(scope="module")
def magnitude_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("magnitude")
    result = run_cli(run_dir, *TINY, "sparsity=s80", "callbacks.checkpoint.every_n_train_steps=10")
    return run_dir, result


def test_results_json_has_every_field_and_the_schedules_sparsity(magnitude_run):
    run_dir, _ = magnitude_run
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results) == [
        "method",
        "model",
        "data",
        "init",
        "seed",
        "target_sparsity",
        "sparsity",
        "layer_sparsity",
        "metrics",
        "steps",
        "seconds",
        "parameters",
        "overrides",
        "resumed_from_step",
        "method_details",
        "flops",
    ]
    assert results["init"]["variant"] == "standard" and results["init"]["mask_from"] is None
    assert isinstance(results["method_details"], dict)
    assert results["overrides"] == [
        *TINY,
        "sparsity=s80",
        "callbacks.checkpoint.every_n_train_steps=10",
    ]
    assert (results["method"], results["model"], results["data"]) == (
        "magnitude",
        "cnn1d",
        "mnist1d",
    )
    assert results["target_sparsity"] == 0.8
    assert results["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert results["steps"] == 40
    assert 0.0 <= results["metrics"]["test/acc"] <= 1.0


def test_masks_pt_uses_the_models_own_names_and_matches_results(magnitude_run):
    run_dir, _ = magnitude_run
    results = json.loads((run_dir / "results.json").read_text())
    masks = torch.load(run_dir / "masks.pt")
    assert (
        set(masks)
        == set(results["layer_sparsity"])
        == {"0.weight", "3.weight", "6.weight", "10.weight", "12.weight"}
    )
    assert all(m.dtype == torch.bool for m in masks.values())
    for name, mask in masks.items():
        assert results["layer_sparsity"][name] == pytest.approx(1 - mask.float().mean().item())


def test_init_pt_is_the_plain_state_dict_before_training(magnitude_run):
    run_dir, _ = magnitude_run
    init = torch.load(run_dir / "init.pt")
    masks = torch.load(run_dir / "masks.pt")
    assert set(masks) <= set(init)
    assert not any(k.endswith("_mask") for k in init)
    assert all(bool((init[n] != 0).all()) for n in masks)  # nothing pruned yet


def test_checkpoint_carries_masks_and_pruned_weights_are_zero(magnitude_run):
    run_dir, _ = magnitude_run
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    masks = torch.load(run_dir / "masks.pt")
    for name, keep in masks.items():
        assert torch.equal(state[f"model.{name}_mask"], keep)
        assert bool((state[f"model.{name}"][~keep] == 0).all())


def test_summary_names_parameters_sparsity_accuracy_and_outputs(magnitude_run):
    run_dir, result = magnitude_run
    assert "dense-equivalent parameters" in result.stdout
    assert "sparsity 0.8000 (target 0.80)" in result.stdout
    assert "test/acc" in result.stdout and str(run_dir) in result.stdout


def test_dense_baseline_prunes_nothing_and_writes_the_same_outputs(tmp_path):
    run_cli(tmp_path, *TINY, "method=dense")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["method"] == "dense" and results["sparsity"] == 0.0
    assert all(bool(m.all()) for m in torch.load(tmp_path / "masks.pt").values())
