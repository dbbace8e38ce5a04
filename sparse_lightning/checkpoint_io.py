"""Checkpoints written to a temporary name and renamed: a run killed mid-write keeps its last
complete checkpoint instead of a truncated one that cannot be resumed from."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from lightning_fabric.utilities.cloud_io import _atomic_save, get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves are atomic (write, fsync, rename)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "file" not in get_filesystem(path).protocol:  # remote storage: Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            _atomic_save(checkpoint, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
