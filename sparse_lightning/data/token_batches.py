"""Batches built by token count with length bucketing (as fairseq's ``max_tokens``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from sparse_lightning.errors import ConfigError


def accumulation_steps(
    global_tokens: int | None, max_tokens: int, devices: int, num_nodes: int = 1
) -> int:
    """Micro-batches per optimiser step k such that every step sees ``global_tokens`` padded
    tokens: global_tokens = max_tokens x devices x num_nodes x k, exactly (null: k = 1).

    tensor2tensor's ``batch_size`` is a per-core cap on padded tokens and a step sums over all
    cores; here a device takes at most ``max_tokens`` per micro-batch, so the same global batch
    on fewer devices is reached by accumulating gradients. The config resolver
    ``${accumulation:...}``; raises ConfigError when the product cannot be met exactly.
    """
    if global_tokens is None:
        return 1
    try:
        total, per_pass = int(global_tokens), int(max_tokens) * int(devices) * int(num_nodes)
    except (TypeError, ValueError):
        raise ConfigError(
            f"global_tokens={global_tokens} needs numbers: data.max_tokens={max_tokens}, "
            f"trainer.devices={devices}, trainer.num_nodes={num_nodes}"
        ) from None
    if total < 1 or per_pass < 1 or total % per_pass:
        raise ConfigError(
            f"global_tokens={global_tokens} is not a whole multiple of data.max_tokens={max_tokens}"
            f" x trainer.devices={devices} x trainer.num_nodes={num_nodes} = {per_pass}; change "
            "data.max_tokens or the device count, or set global_tokens=null (no accumulation)"
        )
    return total // per_pass


def token_batches(lengths: np.ndarray, max_tokens: int, order: np.ndarray) -> list[list[int]]:
    """Split ``order`` (indices, sorted by length) into consecutive batches whose padded size,
    count x longest, stays within ``max_tokens``; a longer example makes a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order.tolist():
        length = int(lengths[index])
        if current and (len(current) + 1) * max(longest, length) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


class TokenBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches of at most ``max_tokens`` padded tokens.

    Training (``shuffle``): each epoch the examples are shuffled, stably sorted by length (so
    equal lengths are mixed), cut into batches, and the batch order is shuffled, all from
    ``seed + epoch``. Under DDP every rank takes every world-size-th batch of the same list (in
    training the list is cut to a multiple of the world size so all ranks step together); use
    it with ``trainer.use_distributed_sampler=false``.
    """

    def __init__(self, lengths: np.ndarray, max_tokens: int, shuffle: bool, seed: int = 0) -> None:
        if max_tokens < 1:
            raise ConfigError(f"data.max_tokens={max_tokens} must be positive")
        lengths = np.asarray(lengths)
        self.lengths = lengths
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        if self.shuffle:
            rng = np.random.default_rng(self.seed + self.epoch)
            perm = rng.permutation(len(self.lengths))
            order = perm[np.argsort(self.lengths[perm], kind="stable")]
            batches = token_batches(self.lengths, self.max_tokens, order)
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            order = np.argsort(self.lengths, kind="stable")
            batches = token_batches(self.lengths, self.max_tokens, order)
        rank, world = _rank_and_world()
        if world > 1:  # evaluation keeps every batch (ranks may then differ by one batch)
            keep = len(batches) - len(batches) % world if self.shuffle else len(batches)
            batches = batches[:keep][rank::world]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pad(sequences: list[np.ndarray], value: int) -> torch.Tensor:
    """Right-pad 1-D int arrays into a (batch, longest) long tensor."""
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.from_numpy(seq.astype(np.int64))
    return out
