"""What to do with a run folder that already holds outputs: skip, resume, or refuse.

A folder with ``results.json`` is a finished run: skipped (or, with ``skip_finished=false``,
its outputs are moved to ``previous/<time>/`` first, so nothing written is lost). A folder with
``checkpoints/last.ckpt`` and no ``results.json`` is an interrupted run: resumed from it.
A folder whose recorded overrides differ from this run's belongs to another run: refused.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sparse_lightning.errors import ConfigError
from sparse_lightning.run.folder import (
    CHECKPOINT_DIR,
    MASKS_FILE,
    PREVIOUS_DIR,
    RESULTS_FILE,
    RUN_FILE,
    last_checkpoint,
    read_checkpoint,
    read_json,
    write_json,
)
from sparse_lightning.run.identity import identity_overrides


@dataclass(frozen=True)
class RunPlan:
    """``finished``: nothing to do; else train, from ``checkpoint`` when it is set."""

    finished: bool = False
    checkpoint: Path | None = None
    resumed_from_step: int = 0


def plan_run(
    run_dir: Path, overrides: list[str], resume: Any = "auto", skip_finished: bool = True
) -> RunPlan:
    """Decide how this run uses ``run_dir``; raises ConfigError before anything is changed."""
    if resume not in ("auto", True, False):
        raise ConfigError(f"resume={resume!r} is not one of auto, true, false")
    _check_same_run(run_dir, overrides)
    last = last_checkpoint(run_dir)
    if (run_dir / RESULTS_FILE).exists():
        if skip_finished:
            return RunPlan(finished=True)
        _move_aside(run_dir)
        return RunPlan()
    if resume is False or not last.exists():
        if resume is True:
            raise ConfigError(f"resume=true but there is no checkpoint at {last}")
        return RunPlan()
    return RunPlan(checkpoint=last, resumed_from_step=_checkpoint_step(last))


def record_run(run_dir: Path, overrides: list[str]) -> None:
    """Mark the folder as this run's, so a run with other overrides never writes into it."""
    if not (run_dir / RUN_FILE).exists():
        write_json(run_dir / RUN_FILE, {"overrides": identity_overrides(overrides)})


def _check_same_run(run_dir: Path, overrides: list[str]) -> None:
    path = run_dir / RUN_FILE
    if not path.exists():
        return
    try:
        recorded = read_json(path).get("overrides", [])
    except ValueError as error:
        raise ConfigError(f"{path} is {error}; delete it or choose another hydra.run.dir") from None
    ours = identity_overrides(overrides)
    if ours != recorded:
        raise ConfigError(
            f"run folder {run_dir} belongs to a run with overrides {recorded}, not "
            f"{ours}; choose another hydra.run.dir"
        )


def _checkpoint_step(path: Path) -> int:
    hint = "delete it or run with resume=false"
    try:
        checkpoint = read_checkpoint(path, mmap=True)
    except ConfigError as error:
        raise ConfigError(f"{error}; {hint}") from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise ConfigError(f"checkpoint {path} is not a Lightning checkpoint; {hint}")
    return int(checkpoint["global_step"])


def _move_aside(run_dir: Path) -> None:
    target = run_dir / PREVIOUS_DIR / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True)
    for name in (RESULTS_FILE, MASKS_FILE, CHECKPOINT_DIR):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(target / name))


class RunFolderGuard(Callback):
    """Hydra callback: refuse another run's folder before Hydra writes its ``.hydra/`` files
    into it, so a refused run changes nothing there (single runs; sweep folders are named by
    their overrides)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            # unresolved: an override's value may itself be a (bad) interpolation, `seed=${x}`
            overrides = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
            _check_same_run(Path(config.hydra.run.dir), list(overrides))
        except ConfigError as error:
            print(f"sparse-train: error: {error}", file=sys.stderr)
            sys.exit(2)
