"""A callback used by tests/test_ddp.py inside real DDP runs: after every optimiser step it
gathers a checksum of every mask from every rank; rank 0 writes them to a JSON file."""

import json

import pytorch_lightning as pl
import torch
import torch.distributed as dist


class MaskChecksums(pl.Callback):
    def __init__(self, out: str):
        self.out = out
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        method = next(c for c in trainer.callbacks if hasattr(c, "mask_set"))
        sums = []
        for entry in method.mask_set.entries:
            flat = entry.mask.reshape(-1).to(torch.float64)
            weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
            sums.append(float((flat * weights).sum()))  # position-sensitive
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sums)
        self.rows.append({"step": trainer.global_step, "ranks": gathered})

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 0:
            with open(self.out, "w") as handle:
                json.dump(self.rows, handle)
