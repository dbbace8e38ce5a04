"""What to do with a run folder that already holds outputs: skip, resume, or refuse.

A folder with ``results.json`` is a finished run: skipped (or, with ``skip_finished=false``,
its outputs are moved to ``previous/<time>/`` first, so nothing written is lost). A folder with
``checkpoints/last.ckpt`` and no ``results.json`` is an interrupted run: resumed from it.
A folder whose recorded overrides differ from this run's belongs to another run: refused.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sparse_lightning.errors import ConfigError
from sparse_lightning.outputs import MASKS_FILE, RESULTS_FILE, write_json

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


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
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
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
        write_json(run_dir / RUN_FILE, {"overrides": sorted(_relevant(overrides))})


def _relevant(overrides: list[str]) -> list[str]:
    ignored = ("hydra.", "resume=", "skip_finished=", "logger")
    return [o for o in overrides if not o.lstrip("+~").startswith(ignored)]


def _check_same_run(run_dir: Path, overrides: list[str]) -> None:
    path = run_dir / RUN_FILE
    if not path.exists():
        return
    recorded = json.loads(path.read_text()).get("overrides", [])
    if sorted(_relevant(overrides)) != recorded:
        raise ConfigError(
            f"run folder {run_dir} belongs to a run with overrides {recorded}, not "
            f"{sorted(_relevant(overrides))}; choose another hydra.run.dir"
        )


def _checkpoint_step(path: Path) -> int:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(checkpoint["global_step"])
    except Exception as error:  # any unreadable file: say which and why, in one line
        raise ConfigError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
            "delete it or run with resume=false"
        ) from None


def _move_aside(run_dir: Path) -> None:
    target = run_dir / "previous" / time.strftime("%Y%m%d-%H%M%S")
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
