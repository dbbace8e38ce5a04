"""A run folder: the name of every file in it, the one atomic write, and typed readers.

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so a
crash never leaves a half-written file for a report, an export or a later run to read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparse_lightning.errors import ConfigError
from sparse_lightning.masks import strip_masks

if TYPE_CHECKING:
    from sparse_lightning.run.results import RunResults

State = dict[str, torch.Tensor]

RESULTS_FILE = "results.json"  # written last: its presence means the run finished
MASKS_FILE = "masks.pt"  # {weight name: bool tensor, True = kept}
INIT_FILE = "init.pt"  # the plain weights before the first optimiser step
REWIND_FILE = "rewind.pt"  # {"step": k, "state_dict": plain weights after step k}
RUN_FILE = "run.json"  # {"overrides": the run's identity}, see run/identity.py
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
MODEL_FILE = "model.pt"  # sparse-export: plain state_dict, pruned entries zero
SPARSE_MODEL_FILE = "model_sparse.pt"  # sparse-export: the same in CSR layout
PREVIOUS_DIR = "previous"  # a rerun's older outputs, under previous/<time>/
MODULE_PREFIX = "model."  # the task module's attribute holding the model, in a checkpoint


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT


# -- writing ----------------------------------------------------------------------------------
def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` then fsync and rename onto ``path``: readers see the old file or the
    complete new one, never a part; on any failure the temporary is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False)))


def save_torch(path: Path, obj: Any) -> None:
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_results(run_dir: Path, results: RunResults) -> None:
    write_json(Path(run_dir) / RESULTS_FILE, results.to_json())


# -- reading ----------------------------------------------------------------------------------
def read_results(run_dir: Path) -> RunResults:
    """The run's results.json as a record; ValueError says why it cannot be used."""
    from sparse_lightning.run.results import RunResults

    return RunResults.from_json(read_json(Path(run_dir) / RESULTS_FILE))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError ("unreadable: ...") if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"unreadable: {error}") from None
    if not isinstance(data, dict):
        raise ValueError("unreadable: not a JSON object")
    return data


def read_masks(run_dir: Path) -> State:
    return torch.load(Path(run_dir) / MASKS_FILE, map_location="cpu", weights_only=True)


def read_init_state(run_dir: Path) -> State:
    return torch.load(Path(run_dir) / INIT_FILE, map_location="cpu", weights_only=True)


def read_rewind(run_dir: Path) -> tuple[int, State]:
    """(step, plain weights) of the run's ``rewind.pt``."""
    saved = torch.load(Path(run_dir) / REWIND_FILE, map_location="cpu", weights_only=True)
    return int(saved["step"]), saved["state_dict"]


def model_state(module_state: Mapping[str, torch.Tensor]) -> State:
    """The model's own ``state_dict`` inside a task module's: the ``model.`` entries, unprefixed
    (mask buffers included)."""
    n = len(MODULE_PREFIX)
    return {k[n:]: v for k, v in module_state.items() if k.startswith(MODULE_PREFIX)}


def read_checkpoint(path: Path, name: str | None = None, mmap: bool = False) -> Any:
    """A Lightning checkpoint (or any torch file); ConfigError naming it (``name``, by default
    ``checkpoint <path>``) if it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as error:  # any unreadable file: say which and why, in one line
        name = name or f"checkpoint {path}"
        raise ConfigError(f"{name} is unreadable ({type(error).__name__}: {error})") from None


def read_model_state(path: Path, name: str | None = None) -> State:
    """Plain model weights (no mask buffers) from a Lightning checkpoint or a ``model.pt``;
    ``name`` says in errors where the path came from (e.g. ``init.weights_from=<path>``)."""
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise ConfigError(f"{name} is not a file (a .ckpt or {MODEL_FILE})")
    loaded = read_checkpoint(path, name)
    if isinstance(loaded, dict) and "state_dict" in loaded:  # a Lightning checkpoint
        loaded = model_state(loaded["state_dict"])
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"{name} holds no model weights")
    return strip_masks(loaded)


def read_last_model_state(run_dir: Path) -> State:
    """Plain model weights of the run's final checkpoint."""
    return read_model_state(last_checkpoint(run_dir))
