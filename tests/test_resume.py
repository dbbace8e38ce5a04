"""A run killed with SIGKILL and launched again finishes exactly as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import run_cli

RUN = [
    "trainer.max_steps=160",
    "trainer.val_check_interval=80",
    "data.num_samples=1000",
    "data.val_size=100",
    "data.batch_size=32",
    "logger=none",
    "callbacks.checkpoint.every_n_train_steps=20",
]


def results_and_masks(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    return results, torch.load(run_dir / "masks.pt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_cli(run_dir, *RUN)
    return results_and_masks(run_dir)


def kill_after_first_checkpoint(run_dir) -> None:
    cmd = [sys.executable, "-m", "sparse_lightning.train", f"hydra.run.dir={run_dir}", *RUN]
    # The same thread count as run_cli's runs: CPU kernels reduce in a thread-dependent order.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run_dir / "results.json").exists()


def test_killed_run_resumes_with_the_same_command_and_matches_an_uninterrupted_run(
    tmp_path, uninterrupted
):
    kill_after_first_checkpoint(tmp_path)
    step_at_kill = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)[
        "global_step"
    ]
    assert 0 < step_at_kill < 160

    run_cli(tmp_path, *RUN)  # the same command again
    results, masks = results_and_masks(tmp_path)
    expected_results, expected_masks = uninterrupted
    assert results["resumed_from_step"] == step_at_kill
    assert expected_results["resumed_from_step"] == 0
    assert results["steps"] == expected_results["steps"] == 160
    assert results["metrics"] == expected_results["metrics"]
    assert results["sparsity"] == expected_results["sparsity"]
    assert masks.keys() == expected_masks.keys()
    assert all(torch.equal(masks[n], expected_masks[n]) for n in masks)


def test_a_finished_run_is_skipped_and_a_forced_rerun_keeps_the_old_outputs(tmp_path):
    run_cli(tmp_path, *RUN, "trainer.max_steps=40", "trainer.val_check_interval=20")
    first = (tmp_path / "results.json").read_text()
    again = run_cli(tmp_path, *RUN, "trainer.max_steps=40", "trainer.val_check_interval=20")
    assert "already finished" in again.stdout
    assert (tmp_path / "results.json").read_text() == first

    run_cli(
        tmp_path,
        *RUN,
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "skip_finished=false",
    )
    (previous,) = (tmp_path / "previous").iterdir()
    assert (previous / "results.json").read_text() == first
    assert (tmp_path / "results.json").exists()


def test_a_run_folder_of_another_run_is_refused(tmp_path):
    run_cli(tmp_path, *RUN, "trainer.max_steps=40", "trainer.val_check_interval=20")
    before = (tmp_path / "results.json").read_text()
    other = run_cli(
        tmp_path,
        *RUN,
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "sparsity=50",
        check=False,
    )
    assert other.returncode != 0 and "belongs to a run with overrides" in other.stderr
    assert (tmp_path / "results.json").read_text() == before
