"""A callback used by tests/test_ddp.py inside real DDP runs: after every optimiser step it
gathers, from every rank, a checksum of every mask and of all parameters, and a digest of the
method's noise-stream state (VD / l0); rank 0 writes them to a JSON file."""

import hashlib
import json

import pytorch_lightning as pl
import torch
import torch.distributed as dist


def checksum(tensor: torch.Tensor) -> float:
    """Position-sensitive: a permutation of the entries changes it."""
    flat = tensor.detach().reshape(-1).to(torch.float64)
    return float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())


class MaskChecksums(pl.Callback):
    def __init__(self, out: str):
        self.out = out
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        method = next(c for c in trainer.callbacks if hasattr(c, "mask_set"))
        source = getattr(method, "noise", None)
        mine = {
            "masks": [checksum(entry.mask) for entry in method.mask_set.entries],
            "params": sum(checksum(p) for p in pl_module.parameters()),
            "noise": None
            if source is None
            else hashlib.sha1(
                b"".join(s.numpy().tobytes() for s in source.state_dict()["states"])
                + repr((source.philox_key, source.philox_counter)).encode()
            ).hexdigest(),
        }
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        self.rows.append({"step": trainer.global_step, "ranks": gathered})

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            with open(self.out, "w") as handle:
                json.dump(self.rows, handle)
