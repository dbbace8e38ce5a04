"""Checkpoints written by the run folder's one atomic write: a run killed mid-write keeps its
last complete checkpoint instead of a truncated one that cannot be resumed from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_fabric.utilities.cloud_io import _atomic_save, get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO

from sparse_lightning.run.folder import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves go through ``run.folder.write_atomic``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "file" not in get_filesystem(path).protocol:  # remote storage: Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomic(Path(path), lambda tmp: _atomic_save(checkpoint, tmp))
