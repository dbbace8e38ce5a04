"""`sparse-export`: plain and CSR files that load without sparse_lightning, zeros where pruned."""

import subprocess
import sys

import pytest
import torch

from sparse_lightning.models.cnn1d import cnn1d
from tests.conftest import TINY, run_cli


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    run_cli(run_dir, *TINY)
    result = subprocess.run(
        [sys.executable, "-m", "sparse_lightning.export", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    return run_dir, result.stdout


def test_model_pt_loads_into_the_unmodified_model_class_with_pruned_entries_zero(exported):
    run_dir, _ = exported
    state = torch.load(run_dir / "model.pt")
    model = cnn1d(channels=(32, 64, 64))
    model.load_state_dict(state)  # strict: exactly the plain model's keys
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    masks = torch.load(run_dir / "masks.pt")
    for name, keep in masks.items():
        assert bool((state[name][~keep] == 0).all())
        assert torch.equal(state[name], checkpoint["state_dict"][f"model.{name}"])


def test_model_sparse_pt_holds_the_same_weights_in_csr(exported):
    run_dir, _ = exported
    dense = torch.load(run_dir / "model.pt")
    sparse = torch.load(run_dir / "model_sparse.pt", weights_only=False)
    for name, shape in sparse["shapes"].items():
        weight = sparse["state_dict"][name]
        assert weight.layout == torch.sparse_csr
        assert torch.equal(weight.to_dense().reshape(shape), dense[name])


def test_export_prints_sizes_and_per_layer_sparsity(exported):
    _, stdout = exported
    assert "model.pt" in stdout and "model_sparse.pt" in stdout and "MB" in stdout
    assert "0.weight: sparsity 0.9000" in stdout


def test_export_of_a_folder_that_is_not_a_run_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sparse_lightning.export", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "is not a finished run folder" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("source", ["model.pt", "checkpoints/last.ckpt"])
def test_a_new_run_starts_from_a_sparse_model_keeping_its_zeros_as_masks(
    exported, tmp_path, source
):
    run_dir, _ = exported
    run_cli(
        tmp_path,
        *TINY,
        "method=dense",
        f"init.weights_from={run_dir / source}",
        "init.keep_mask=true",
    )
    start = torch.load(tmp_path / "init.pt")
    exported_state = torch.load(run_dir / "model.pt")
    assert all(torch.equal(start[k], exported_state[k]) for k in exported_state)
    source_masks = torch.load(run_dir / "masks.pt")
    masks = torch.load(tmp_path / "masks.pt")
    assert all(torch.equal(masks[n], source_masks[n]) for n in masks)  # kept, fine-tuned
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(bool((state[f"model.{n}"][~m] == 0).all()) for n, m in masks.items())
