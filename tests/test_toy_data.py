"""`sparse-toy-data` writes data that the real loaders read: the console script, then the
datamodule of that dataset on its output."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from sparse_lightning.data.imagenet import ImageFolderDataModule
from sparse_lightning.data.wmt import ParallelTextDataModule
from tests.conftest import run_command


def toy_data(*args: str) -> None:
    """Run the installed console script (falling back to the module where the scripts folder
    is not on PATH)."""
    script = shutil.which("sparse-toy-data")
    cmd = [script] if script else [sys.executable, "-m", "sparse_lightning.data.toy"]
    result = run_command([*cmd, *args])
    assert result.returncode == 0, result.stderr


def test_imagenet_toy_data_loads_in_the_image_folder_datamodule(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    toy_data("imagenet", str(root), "--train", "3", "--val", "2", "--classes", "4")
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"class_{k}" for k in range(4)]
    dm = ImageFolderDataModule(
        str(root), batch_size=4, num_workers=0, image_size=32, num_classes=4, pin_memory=False
    )
    dm.setup("fit")
    assert len(dm.train_set) == 3 * 4 and len(dm.val_set) == 2 * 4
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long


def test_wmt_toy_data_loads_in_the_parallel_text_datamodule(tmp_path: Path) -> None:
    root = tmp_path / "wmt"
    toy_data("wmt", str(root), "--train", "40", "--valid", "3", "--test", "2")
    lines = {
        name: (root / name).read_text(encoding="utf-8").splitlines()
        for name in ("train.en", "train.de", "valid.en", "test.de")
    }
    assert [len(v) for v in lines.values()] == [40, 40, 3, 2]
    dm = ParallelTextDataModule(
        str(root), vocab_size=64, max_tokens=128, max_length=64, num_workers=0
    )
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 40 and len(dm.datasets["valid"]) == 3
    batch = next(iter(dm.val_dataloader()))
    assert batch["references"] == (root / "valid.de").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("bad", [["imagenet", "d", "--train", "0"], ["mnist", "d"]])
def test_toy_data_rejects_bad_arguments(tmp_path: Path, bad: list[str]) -> None:
    result = run_command([sys.executable, "-m", "sparse_lightning.data.toy", *bad], cwd=tmp_path)
    assert result.returncode == 2 and "error:" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "d").exists()
