"""A loss that turns NaN or inf stops the run, names the step, keeps the last good checkpoint."""

import re

import torch

from tests.conftest import TINY, run_cli


def test_exploding_loss_stops_the_run_naming_the_step(tmp_path):
    result = run_cli(
        tmp_path,
        *TINY,
        "task.optimizer.lr=1e12",
        "task.optimizer.momentum=0.0",
        "task.optimizer.nesterov=false",
        "callbacks.checkpoint.every_n_train_steps=1",
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if "NaN or inf" in line)
    assert re.search(r"step \d+", line) and "magnitude" in line
    assert not (tmp_path / "results.json").exists()
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    if checkpoint.exists():  # a checkpoint taken before the loss went bad
        state = torch.load(checkpoint, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
