"""`sparse-export <run folder>`: the trained sparse model as files that need no sparse_lightning.

- ``model.pt``: a plain ``state_dict`` that loads into the unmodified model class, pruned entries
  zero (mask buffers and any parameters a method added, e.g. VD's log_sigma2, are left out);
- ``model_sparse.pt``: the same, with every pruned weight in torch's sparse CSR layout
  (``{"state_dict": ..., "shapes": {name: dense shape}}``; conv kernels are stored as
  (out_channels, -1) matrices, ``.to_dense().reshape(shape)`` restores them).

A run with an N:M pattern (``method.pattern``, recorded in results.json's ``method_details``) is
checked before anything is written: every group of M consecutive input weights in masks.pt keeps
exactly N (``check_pattern``; the masks are counted, not the values, since a kept weight may be
exactly 0.0). The files are the same; for sparse tensor cores, load ``model.pt`` into the model
on a GPU in float16 / bfloat16 and call ``to_semi_structured(model)``: every ``nn.Linear`` whose
weight has at most 2 non-zeros in every 4 along its input (2:4, and so also 1:4 and 1:2) becomes
a ``torch.sparse.to_sparse_semi_structured`` tensor. Conv and embedding weights stay dense
(semi-structured kernels are matmuls), as do weights whose shape the kernel refuses and weights
shared with another module.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.patterns import NMPattern, group_size, grouped, parse_pattern
from sparse_lightning.run.folder import (
    INIT_FILE,
    MASKS_FILE,
    MODEL_FILE,
    RESULTS_FILE,
    SPARSE_MODEL_FILE,
    last_checkpoint,
    read_init_state,
    read_json,
    read_last_model_state,
    read_masks,
    save_torch,
)

SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


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


def run_pattern(run_dir: Path) -> NMPattern | None:
    """The N:M pattern a run trained with (results.json's ``method_details``), None if none or
    if the folder has no readable results.json."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        details = read_json(path).get("method_details") or {}
    except ValueError:
        return None
    return parse_pattern(details.get("pattern")) if isinstance(details, dict) else None


def check_pattern(tensors: Mapping[str, torch.Tensor], n: int, m: int) -> None:
    """Raise ConfigError unless every group of ``m`` consecutive input weights (``patterns``'
    groups) of every tensor holds exactly ``n`` kept entries (bool masks) or at most ``n``
    non-zeros (weights: a kept weight may be exactly 0.0, so only the mask is exact). The
    message names the first tensor and group that breaks it."""
    for name, tensor in tensors.items():
        if group_size(tensor.shape) % m:
            raise ConfigError(
                f"{name} {tuple(tensor.shape)}: its input dimension {group_size(tensor.shape)} "
                f"is not a multiple of {m}, so it holds no {n}:{m} pattern"
            )
        counts = grouped(tensor != 0, m).sum(dim=1)
        bad = counts != n if tensor.dtype == torch.bool else counts > n
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            what = "kept entries" if tensor.dtype == torch.bool else "non-zeros"
            raise ConfigError(
                f"{name} {tuple(tensor.shape)} breaks the {n}:{m} pattern: group {first} "
                f"(of {m} consecutive input weights) has {int(counts[first])} {what}, "
                f"{int(bad.sum())} groups in all"
            )


def semi_structured_fits(weight: torch.Tensor) -> bool:
    """Whether a 2-D weight is 2:4 by its values (at most 2 non-zeros in every 4 along dim 1)
    and of a shape the semi-structured kernel of its dtype accepts (row and column multiples,
    from torch's own table where it has one)."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    if bool((grouped(weight != 0, 4).sum(dim=1) > 2).any()):
        return False
    sparse = torch.sparse.SparseSemiStructuredTensor
    backend = (
        torch.sparse.SparseSemiStructuredTensorCUTLASS
        if getattr(sparse, "_FORCE_CUTLASS", False)
        else torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    )
    limits = getattr(backend, "_DTYPE_SHAPE_CONSTRAINTS", {}).get(weight.dtype)
    if limits is None:
        return True  # torch checks it itself on conversion
    rows, cols = weight.shape
    return rows % limits.sparse_min_rows == 0 and cols % limits.sparse_min_cols == 0


def to_semi_structured(model: nn.Module) -> nn.Module:
    """``model`` (in place) with every eligible ``nn.Linear`` weight replaced by
    ``torch.sparse.to_sparse_semi_structured(weight)`` (a frozen Parameter), for inference on
    sparse tensor cores (Ampere and later).

    Eligible: 2:4 by its values and a shape the kernel takes (``semi_structured_fits``), and
    not shared with another module (a tied embedding would lose its table). Every Linear must
    be on a CUDA device in float16 or bfloat16 (``model.cuda().half()``): the kernels exist only
    there, so anything else is a ValueError before any layer changes. The inputs' leading
    dimensions must meet the kernel's row multiple too (8 for fp16 / bf16 under cuSPARSELt).
    """
    from torch.sparse import to_sparse_semi_structured

    linears = [
        (name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)
    ]
    for name, module in linears:
        weight = module.weight
        if not weight.is_cuda or weight.dtype not in SEMI_STRUCTURED_DTYPES:
            raise ValueError(
                f"to_semi_structured needs every Linear on a CUDA device in float16 or bfloat16 "
                f"(e.g. model.cuda().half()); {name or 'the model'}.weight is {weight.dtype} on "
                f"{weight.device}"
            )
    users: dict[int, int] = {}
    for module in model.modules():
        for parameter in module._parameters.values():
            if parameter is not None:
                users[id(parameter)] = users.get(id(parameter), 0) + 1
    for _, module in linears:
        weight = module.weight
        if users[id(weight)] == 1 and semi_structured_fits(weight.detach()):
            compressed = to_sparse_semi_structured(weight.detach().contiguous())
            module.weight = nn.Parameter(compressed, requires_grad=False)
    return model


def export(run_dir: Path) -> dict[str, Path]:
    """Write model.pt and model_sparse.pt into ``run_dir``; print sizes and per-layer sparsity.
    A run with an N:M pattern is checked first (``check_pattern`` on its masks)."""
    run_dir = Path(run_dir)
    state, masks = load_run(run_dir)
    pattern = run_pattern(run_dir)
    if pattern is not None:
        check_pattern(masks, pattern.n, pattern.m)
    paths = {"dense": run_dir / MODEL_FILE, "sparse": run_dir / SPARSE_MODEL_FILE}
    save_torch(paths["dense"], state)
    save_torch(paths["sparse"], to_sparse(state, masks))
    for label, path in paths.items():
        print(f"{path}: {os.path.getsize(path) / 1e6:.2f} MB ({label})")
    for name, keep in masks.items():
        print(f"  {name}: sparsity {1 - keep.float().mean().item():.4f}")
    if pattern is not None:
        print(
            f"pattern {pattern}: every group of {pattern.m} input weights keeps exactly "
            f"{pattern.n} in all {len(masks)} pruned tensors (to_semi_structured for GPU kernels)"
        )
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
