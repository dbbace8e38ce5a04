"""A loss or weights that turn NaN or inf stop the run with one line naming the step (exit 1),
and the last checkpoint on disk is the last good one: it exists, loads and is finite.

The NaN is injected at a known step through the real CLI, by the callbacks below (named on the
command line as `+callbacks.<name>._target_=tests.test_nonfinite.<Class>`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from tests.conftest import TINY, run_cli

EVERY = 5  # checkpoint interval, in optimiser steps


class NanInputAt(pl.Callback):
    """Fills the inputs of the batch trained at ``global_step == step`` with NaN, so that batch's
    loss is NaN (the weights stay finite until its optimiser step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


class NanWeightAt(pl.Callback):
    """Sets one weight to NaN right after optimiser step ``step``, before that step's
    checkpoint: the loss so far was finite, the weights no longer are."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


def stop_line(run_dir: Path, callback: str, step: int) -> str:
    result = run_cli(
        run_dir,
        *TINY,
        f"+callbacks.poison._target_=tests.test_nonfinite.{callback}",
        f"+callbacks.poison.step={step}",
        f"callbacks.checkpoint.every_n_train_steps={EVERY}",
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("sparse-train: error: "), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (run_dir / "results.json").exists()
    return lines[-1]


def last_good_checkpoint(run_dir: Path) -> dict[str, Any]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state = checkpoint["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    return checkpoint


def test_a_nan_loss_stops_the_run_naming_its_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    """The batch trained after 12 steps has a NaN loss: optimiser step 13. The checkpoint of
    step 10 is the last good one; the one of step 15 is refused."""
    line = stop_line(tmp_path, "NanInputAt", step=12)
    assert "the training loss became NaN or inf at step 13" in line
    assert "magnitude at sparsity" in line
    assert last_good_checkpoint(tmp_path)["global_step"] == 10


def test_weights_that_turn_nan_stop_the_run_before_their_checkpoint_is_written(
    tmp_path: Path,
) -> None:
    """A weight goes NaN after step 15, exactly when its checkpoint is due: that checkpoint is
    refused (the loss never was NaN) and the one of step 10 stays."""
    line = stop_line(tmp_path, "NanWeightAt", step=15)
    assert "the weights became NaN or inf by step 15" in line
    assert last_good_checkpoint(tmp_path)["global_step"] == 10
