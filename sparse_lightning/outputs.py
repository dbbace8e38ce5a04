"""Run outputs (results.json, masks.pt, init.pt), each written to a temporary name and renamed,
so a crash never leaves a half-written file for a report or a later run to read."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_FILE = "results.json"
MASKS_FILE = "masks.pt"
INIT_FILE = "init.pt"


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False)))


def save_torch(path: Path, obj: Any) -> None:
    _write_atomic(path, lambda tmp: torch.save(obj, tmp))


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RESULTS_FILE).read_text())
