"""results.json, masks.pt / init.pt and checkpoints are written to a temporary name and renamed:
a write that fails at any point leaves the previous file byte-identical and no temporary behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sparse_lightning.run.checkpoint_io import AtomicCheckpointIO
from sparse_lightning.run.folder import save_torch, write_json

OLD = b"the previous, complete file\n"


class Unpicklable:
    """Fails inside the serialiser, after the parts before it were already serialised; notes the
    folder's files at that moment (the temporary must exist then, and be gone afterwards)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[str] = []

    def __reduce__(self) -> Any:
        self.seen = sorted(os.listdir(self.folder))
        raise RuntimeError("serialisation failed midway")


def save_checkpoint(path: Path, obj: Any) -> None:
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "x": obj}, path)


WRITERS: dict[str, Callable[[Path, Any], None]] = {
    "write_json": lambda path, obj: write_json(path, {"metrics": {"acc": 0.5}, "x": obj}),
    "save_torch": lambda path, obj: save_torch(path, {"w": torch.ones(1000), "x": obj}),
    "checkpoint": save_checkpoint,
}
NAMES = {"write_json": "results.json", "save_torch": "masks.pt", "checkpoint": "last.ckpt"}


def previous_file(tmp_path: Path, writer: str) -> Path:
    path = tmp_path / NAMES[writer]
    path.write_bytes(OLD)
    return path


def assert_untouched(path: Path) -> None:
    assert path.read_bytes() == OLD
    assert os.listdir(path.parent) == [path.name], "a temporary file was left behind"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_complete_write_replaces_the_file(tmp_path: Path, writer: str) -> None:
    """The control: the same call with a serialisable value does replace the old file."""
    path = previous_file(tmp_path, writer)
    WRITERS[writer](path, [1, 2, 3])
    assert path.read_bytes() != OLD
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("writer", ["save_torch", "checkpoint"])
def test_a_serialiser_that_raises_midway_leaves_the_old_file(tmp_path: Path, writer: str) -> None:
    path = previous_file(tmp_path, writer)
    bad = Unpicklable(tmp_path)
    with pytest.raises(RuntimeError, match="serialisation failed midway"):
        WRITERS[writer](path, bad)
    assert len(bad.seen) == 2, "the temporary should exist while it is being written"
    assert_untouched(path)


def test_a_json_value_that_cannot_be_encoded_leaves_the_old_file(tmp_path: Path) -> None:
    path = previous_file(tmp_path, "write_json")
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(path, {"metrics": {"acc": 0.5}, "x": object()})
    assert_untouched(path)


def test_a_json_write_cut_off_halfway_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after half of the text reached the temporary file."""
    path = previous_file(tmp_path, "write_json")
    real_write_text = Path.write_text
    written: list[str] = []

    def half_then_full_disk(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        written.append(self.read_text())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"metrics": {"acc": 0.5}, "notes": "x" * 1000})
    assert written and 0 < len(written[0]) < 1000
    assert_untouched(path)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_rename_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary is complete, then the rename fails (a full quota, a vanished folder)."""
    path = previous_file(tmp_path, writer)
    temporaries: list[int] = []

    def complete_then_fail(src: Any, dst: Any) -> None:
        assert Path(dst) == path and Path(src).parent == tmp_path and Path(src) != path
        temporaries.append(Path(src).stat().st_size)
        raise OSError(122, "Disk quota exceeded")

    monkeypatch.setattr(os, "replace", complete_then_fail)
    with pytest.raises(OSError, match="quota"):
        WRITERS[writer](path, [1, 2, 3])
    assert temporaries and temporaries[0] > 0
    assert_untouched(path)
