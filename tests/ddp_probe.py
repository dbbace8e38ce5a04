"""A callback used by tests/test_ddp.py inside real DDP runs: after every optimiser step it
gathers, from every rank, a checksum of every mask and of all parameters, and a digest of the
numbers the method's noise streams (VD / l0) would draw next, and the log of a controlled
regulariser's multiplier; rank 0 writes them to a JSON
file."""

import hashlib
import json

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from sparse_lightning.layers.noise import NoiseSource


def checksum(tensor: torch.Tensor) -> float:
    """Position-sensitive: a permutation of the entries changes it."""
    flat = tensor.detach().reshape(-1).to(torch.float64)
    return float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())


def next_draws_digest(source: NoiseSource) -> str:
    """A digest of the uniforms and normals the streams would draw next (the way the layers draw
    them), from a copy restored from the streams' state, so training's draws are untouched."""
    state = source.state_dict()
    copy = NoiseSource(state["seed"], state["rank"], source.device)
    copy.load_state_dict(state)
    draws = [copy.uniform_(torch.empty(4096)), copy.normal_(torch.empty(4096))]
    return hashlib.sha1(b"".join(d.numpy().tobytes() for d in draws)).hexdigest()


class MaskChecksums(pl.Callback):
    def __init__(self, out: str):
        self.out = out
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        method = next(c for c in trainer.callbacks if hasattr(c, "mask_set"))
        source = getattr(method, "noise", None)
        controller = getattr(method, "controller", None)
        mine = {
            "multiplier": None if controller is None else float(controller.log_weight),
            "masks": [checksum(entry.mask) for entry in method.mask_set.entries],
            "params": sum(checksum(p) for p in pl_module.parameters()),
            "noise": None if source is None else next_draws_digest(source),
        }
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        self.rows.append({"step": trainer.global_step, "ranks": gathered})

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            with open(self.out, "w") as handle:
                json.dump(self.rows, handle)
