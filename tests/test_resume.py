"""A run killed with SIGKILL and launched again finishes exactly as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from tests.conftest import run_cli, run_command, sparse_train, subprocess_env

KILL_AT = "SPARSE_TRAIN_TEST_SIGKILL_AT_STEP"


class SigkillAt(pl.Callback):
    """The process kills itself with SIGKILL right after optimiser step $SPARSE_TRAIN_TEST_
    SIGKILL_AT_STEP (before that step's checkpoint, if one is due); without it, does nothing.
    Every run here carries it, so the killed run and its rerun have the same command line."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        step = os.environ.get(KILL_AT)
        if step is not None and trainer.global_step == int(step):
            os.kill(os.getpid(), signal.SIGKILL)


RUN = [
    "trainer.max_steps=160",
    "trainer.val_check_interval=80",
    "data.num_samples=1000",
    "data.val_size=100",
    "data.batch_size=32",
    "logger=none",
    "callbacks.checkpoint.every_n_train_steps=20",
    "+callbacks.sigkill._target_=tests.test_resume.SigkillAt",
]


def results_and_masks(run_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    results = json.loads((run_dir / "results.json").read_text())
    return results, torch.load(run_dir / "masks.pt")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_cli(run_dir, *RUN)
    return results_and_masks(run_dir)


def killed_at_step(run_dir: Path, step: int) -> None:
    """Start the run and let it SIGKILL itself after optimiser step ``step``."""
    cmd = sparse_train(f"hydra.run.dir={run_dir}", *RUN)
    result = run_command(cmd, env=subprocess_env(**{KILL_AT: str(step)}))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not (run_dir / "results.json").exists()


def test_killed_run_resumes_with_the_same_command_and_matches_an_uninterrupted_run(
    tmp_path, uninterrupted
):
    """Killed after step 50: the checkpoint of step 40 is the last one, 10 steps are redone."""
    killed_at_step(tmp_path, 50)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 40

    run_cli(tmp_path, *RUN)  # the same command again
    results, masks = results_and_masks(tmp_path)
    expected_results, expected_masks = uninterrupted
    assert results["resumed_from_step"] == 40
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
        "sparsity=s50",
        check=False,
    )
    assert other.returncode != 0 and "belongs to a run with overrides" in other.stderr
    assert (tmp_path / "results.json").read_text() == before
