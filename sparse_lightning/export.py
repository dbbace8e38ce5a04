"""`sparse-export <run folder>`: the trained sparse model as files that need no sparse_lightning.

- ``model.pt``: a plain ``state_dict`` that loads into the unmodified model class, pruned entries
  zero (mask buffers and any parameters a method added, e.g. VD's log_sigma2, are left out);
- ``model_sparse.pt``: the same, with every pruned weight in torch's sparse CSR layout
  (``{"state_dict": ..., "shapes": {name: dense shape}}``; conv kernels are stored as
  (out_channels, -1) matrices, ``.to_dense().reshape(shape)`` restores them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from sparse_lightning.errors import ConfigError
from sparse_lightning.run.folder import (
    INIT_FILE,
    MASKS_FILE,
    MODEL_FILE,
    SPARSE_MODEL_FILE,
    last_checkpoint,
    read_init_state,
    read_last_model_state,
    read_masks,
    save_torch,
)


def load_run(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The final plain weights and the masks of a finished run folder."""
    run_dir = Path(run_dir)
    checkpoint_path = last_checkpoint(run_dir)
    for needed in (run_dir / MASKS_FILE, run_dir / INIT_FILE, checkpoint_path):
        if not needed.exists():
            raise ConfigError(f"{run_dir} is not a finished run folder: {needed.name} is missing")
    masks = read_masks(run_dir)
    plain_names = read_init_state(run_dir).keys()  # the unmodified model class's names
    trained = read_last_model_state(run_dir)
    state = {}
    for name in plain_names:
        if name not in trained:
            raise ConfigError(f"checkpoint {checkpoint_path} has no weight '{name}'")
        state[name] = trained[name].clone()
    for name, keep in masks.items():
        state[name].mul_(keep)  # exact zeros even if a method stored dense values
    return state, masks


def to_sparse(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict:
    """Pruned weights in CSR layout; everything else unchanged."""
    sparse, shapes = dict(state), {}
    for name in masks:
        weight = state[name]
        shapes[name] = tuple(weight.shape)
        sparse[name] = weight.reshape(weight.shape[0], -1).to_sparse_csr()
    return {"state_dict": sparse, "shapes": shapes}


def export(run_dir: Path) -> dict[str, Path]:
    """Write model.pt and model_sparse.pt into ``run_dir``; print sizes and per-layer sparsity."""
    run_dir = Path(run_dir)
    state, masks = load_run(run_dir)
    paths = {"dense": run_dir / MODEL_FILE, "sparse": run_dir / SPARSE_MODEL_FILE}
    save_torch(paths["dense"], state)
    save_torch(paths["sparse"], to_sparse(state, masks))
    for label, path in paths.items():
        print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB ({label})")
    for name, keep in masks.items():
        print(f"  {name}: sparsity {1 - keep.float().mean().item():.4f}")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sparse-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished sparse-train run folder")
    args = parser.parse_args(argv)
    try:
        export(args.run_dir)
    except ConfigError as error:
        print(f"sparse-export: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
