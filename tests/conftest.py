"""Shared test setup: offline W&B, one thread, compact Hydra errors, and the helpers that run the
real entry point (in its own process, or in this one)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from sparse_lightning.config import register_resolvers

# Set, not defaulted: a user's own HYDRA_FULL_ERROR=1 or WANDB_MODE=online must not change what
# the tests see (tracebacks instead of one-line errors, runs uploaded).
TEST_ENV = {
    "OMP_NUM_THREADS": "1",  # tests share 2 cores, and oversubscribed OpenMP threads spin
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HYDRA_FULL_ERROR": "0",
}
UNSET = ("WANDB_API_KEY", "SPARSE_TRAIN_FULL_ERROR")
TIMEOUT_S = 300  # a tiny run takes seconds; a hung child fails the test instead of the suite

os.environ.update(TEST_ENV)
for _name in UNSET:
    os.environ.pop(_name, None)
torch.set_num_threads(1)
register_resolvers()  # for the tests that compose configs in this process

TINY = [
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "data.num_samples=1000",
    "data.val_size=100",
    "logger=none",
]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of every child process a test starts: TEST_ENV over this one's."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    return {**env, **TEST_ENV, **extra}


def sparse_train(*args: str) -> list[str]:
    """The `sparse-train` command line, run by this interpreter."""
    return [sys.executable, "-m", "sparse_lightning.train", *args]


def run_command(
    cmd: Sequence[str], timeout: float = TIMEOUT_S, **kwargs: Any
) -> subprocess.CompletedProcess:
    """Run ``cmd`` as every subprocess test does: ``subprocess_env()``, output captured as
    text, no stdin (nothing may prompt), and a timeout."""
    kwargs.setdefault("env", subprocess_env())
    return subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )


def run_cli(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `sparse-train` as a user would, in its own process, into ``run_dir``."""
    cmd = sparse_train(f"hydra.run.dir={run_dir}", *overrides)
    result = run_command(cmd)
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
