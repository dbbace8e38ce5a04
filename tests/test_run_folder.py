"""The run folder: one atomic write (temporary, fsync, rename) behind every writer, and the
one reader of a model's plain weights from a Lightning checkpoint or a model.pt."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from sparse_lightning.errors import ConfigError
from sparse_lightning.run import folder
from sparse_lightning.run.checkpoint_io import AtomicCheckpointIO

WRITERS = {
    "write_json": lambda path: folder.write_json(path, {"a": 1}),
    "save_torch": lambda path: folder.save_torch(path, {"w": torch.ones(2)}),
    "checkpoint": lambda path: AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, path),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writer_flushes_the_temporary_to_disk_before_renaming_it(
    tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "out.file"
    WRITERS[writer](path)
    assert [kind for kind, _ in events] == ["fsync", "replace"]
    (_, synced), (_, renamed) = events
    assert synced == renamed and Path(synced).parent == tmp_path and Path(synced) != path
    assert os.listdir(tmp_path) == ["out.file"]


def lightning_checkpoint() -> dict[str, Any]:
    weight, mask = torch.arange(6.0).reshape(2, 3), torch.tensor([[True, False, True]] * 2)
    return {
        "global_step": 7,
        "state_dict": {
            "model.0.weight": weight,
            "model.0.weight_mask": mask,
            "model.0.bias": torch.tensor([1.0, 2.0]),
            "criterion.weight": torch.ones(1),  # another attribute of the task module
        },
    }


def test_the_plain_model_state_of_a_checkpoint_drops_the_prefix_and_the_masks(tmp_path: Path):
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(), path)
    state = folder.read_model_state(path)
    assert sorted(state) == ["0.bias", "0.weight"]
    assert torch.equal(state["0.weight"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(state["0.bias"], torch.tensor([1.0, 2.0]))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(lightning_checkpoint(), run / "checkpoints" / "last.ckpt")
    assert sorted(folder.read_last_model_state(run)) == ["0.bias", "0.weight"]


def test_a_model_pt_is_read_as_it_is_less_its_masks(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "w_mask": torch.ones(2, dtype=torch.bool)}, path)
    assert list(folder.read_model_state(path)) == ["w"]


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "init.weights_from=X is not a file (a .ckpt or model.pt)"),
        (b"not a torch file", "init.weights_from=X is unreadable (UnpicklingError"),
        ({"state_dict": {"criterion.weight": torch.ones(1)}}, "X holds no model weights"),
    ],
)
def test_a_file_without_model_weights_is_one_line_naming_it(tmp_path, content, needle):
    path = tmp_path / "w.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError) as error:
        folder.read_model_state(path, "init.weights_from=X")
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_rewind_and_masks_read_back_what_was_saved(tmp_path: Path) -> None:
    keep = torch.tensor([True, False])
    folder.save_torch(tmp_path / folder.REWIND_FILE, {"step": 3, "state_dict": {"w": keep * 2.0}})
    folder.save_torch(tmp_path / folder.MASKS_FILE, {"w": keep})
    step, state = folder.read_rewind(tmp_path)
    assert step == 3 and torch.equal(state["w"], torch.tensor([2.0, 0.0]))
    assert torch.equal(folder.read_masks(tmp_path)["w"], keep)
