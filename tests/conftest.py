"""Shared test setup: offline W&B, few threads, and a helper that runs the real entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")
torch.set_num_threads(1)

TINY = [
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "data.num_samples=1000",
    "data.val_size=100",
    "logger=none",
]


def run_cli(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `sparse-train` as a user would, in its own process, into ``run_dir``."""
    cmd = [sys.executable, "-m", "sparse_lightning.train", f"hydra.run.dir={run_dir}", *overrides]
    # One thread per run: tests share 2 cores, and oversubscribed OpenMP threads spin.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def run_in_process(run_dir: Path, *overrides: str) -> int:
    """Call the console-script function `sparse_lightning.train.main` in this process (for
    cases that stop before training: no interpreter start-up per case). Returns the exit code;
    read the output with pytest's ``capsys``."""
    from hydra.core.global_hydra import GlobalHydra

    from sparse_lightning import train

    argv = sys.argv
    sys.argv = ["sparse-train", f"hydra.run.dir={run_dir}", *overrides]
    try:
        train.main()
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
