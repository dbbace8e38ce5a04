"""The random numbers of VD and l0 training: one stream set per DDP rank, drawn in parallel on
the CPU, checkpointed with the run.

Why not the global generator: every DDP rank is seeded alike, so every rank would draw the same
weight noise (l0: the same sub-network on every rank each step); and PyTorch's CPU generator
fills a tensor serially, which for l0 (one uniform per weight per step) costs about a third of a
dense resnet18 step on two cores.

Under the ``native`` backend (``backends``), draws into contiguous float32 CPU tensors (l0's
uniforms, one per weight per step; VD's normals, drawn inside its sampling pass) come from
Philox4x32-10 in the fused kernels (``backends/kernels.c``), keyed by (seed, rank): a
counter-based generator has no state but the counter, so every block is computed independently,
on PyTorch's threads, and the numbers depend only on (seed, rank, draw).
Elsewhere (the ``torch`` backend, other dtypes, accelerators) each tensor is split into
``STREAMS`` contiguous chunks and chunk i is always drawn from PyTorch generator i;
on the CPU the chunks of large tensors are filled by a small thread pool (PyTorch releases the
GIL in these kernels); on an accelerator one device generator draws the whole tensor (its
kernels are parallel already). Both the counter and the generators' states are checkpointed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparse_lightning.layers import backends
from sparse_lightning.layers.threads import pool

STREAMS = 4  # fixed, so the numbers drawn do not depend on the thread count
PARALLEL_MIN_NUMEL = 1 << 16  # smaller tensors are drawn in the calling thread
MANTISSA_BITS = (1 << 23) - 1  # float32: 23 mantissa bits ...
EXPONENT_OF_ONE = 127 << 23  # ... under the exponent of 1.0 make a float in [1, 2)


def stream_seeds(seed: int, rank: int, count: int) -> list[int]:
    """Independent 63-bit seeds for ``count`` streams of ``rank`` (numpy's SeedSequence: distinct
    and well mixed for every (seed, rank, stream))."""
    words = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(rank),)).generate_state(
        count, dtype=np.uint64
    )
    return [int(word) >> 1 for word in words]


def _takes_bits(out: torch.Tensor) -> bool:
    """Whether ``out`` can be filled through a 64-bit integer view."""
    return (
        out.dtype == torch.float32
        and out.is_contiguous()
        and out.numel() % 2 == 0
        and out.storage_offset() % 2 == 0
    )


class NoiseSource:
    """Uniform and standard-normal draws for one rank (see the module docstring)."""

    def __init__(self, seed: int, rank: int = 0, device: torch.device | str = "cpu") -> None:
        self.seed, self.rank, self.device = int(seed), int(rank), torch.device(device)
        count = STREAMS if self.device.type == "cpu" else 1
        self.generators = [
            torch.Generator(device=self.device).manual_seed(s)
            for s in stream_seeds(self.seed, self.rank, count)
        ]
        key = np.random.SeedSequence(entropy=self.seed, spawn_key=(self.rank, 1))
        self.philox_key = tuple(int(word) for word in key.generate_state(2, dtype=np.uint32))
        self.philox_counter = 0  # Philox counters used so far (CPU uniform draws)

    def take_philox_counters(self, count: int) -> tuple[int, int, int]:
        """(key0, key1, first counter) for a Philox draw in the kernels that uses ``count``
        counters; they are used up (the next draw starts after them)."""
        base = self.philox_counter
        self.philox_counter += count
        return (*self.philox_key, base)

    def draws_in_kernels(self, out: torch.Tensor) -> bool:
        """Whether draws into ``out`` come from Philox in the kernels (else PyTorch generators)."""
        return backends.fused(out) is not None

    def _fill(self, out: torch.Tensor, draw) -> torch.Tensor:
        """Apply ``draw(chunk, generator)`` to chunk i of ``out`` with stream i."""
        if len(self.generators) == 1:
            draw(out, self.generators[0])
            return out
        if not out.is_contiguous():
            raise ValueError("NoiseSource fills contiguous tensors only")
        pairs = list(zip(out.view(-1).chunk(len(self.generators)), self.generators))
        if out.numel() < PARALLEL_MIN_NUMEL:
            for chunk, generator in pairs:
                draw(chunk, generator)
            return out
        # The calling thread draws too: first chunk, then any chunk no worker has started yet.
        futures = [pool().submit(draw, chunk, generator) for chunk, generator in pairs[1:]]
        draw(*pairs[0])
        for future, pair in zip(reversed(futures), reversed(pairs[1:])):
            if future.cancel():
                draw(*pair)
        for future in futures:
            if not future.cancelled():
                future.result()
        return out

    def uniform_(self, out: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """Fill ``out`` with U(low, high) draws, in place.

        Contiguous float32 on the CPU under the ``native`` backend: Philox, 24 random bits per
        draw (see the module docstring). Otherwise float32 on the CPU takes 23 random mantissa
        bits per draw from 64-bit integer draws (two floats per generator call; ``uniform_``
        makes one call per float): the bits, with the exponent of 1.0, are a float f uniform on
        the 2^23 grid of [1, 2), and u = low + (high - low)(f - 1) lies in [low, high).
        ``uniform_`` itself keeps 24 bits.
        """
        kernels = backends.fused(out)
        if kernels is not None:
            return kernels.uniform_(out, self, low, high)
        if not _takes_bits(out) or len(self.generators) == 1:
            return self._fill(out, lambda chunk, gen: chunk.uniform_(low, high, generator=gen))
        self._fill(out.view(-1).view(torch.int64), lambda chunk, gen: chunk.random_(generator=gen))
        out.view(-1).view(torch.int32).bitwise_and_(MANTISSA_BITS).bitwise_or_(EXPONENT_OF_ONE)
        return out.mul_(high - low).add_(low - (high - low))  # f in [1, 2) -> [low, high)

    def normal_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` with N(0, 1) draws, in place: under the ``native`` backend (CPU float32,
        contiguous) Box-Muller on Philox words, the numbers VD's fused sampling draws for the
        same counters."""
        kernels = backends.fused(out)
        if kernels is not None:
            return kernels.normal_(out, self)
        return self._fill(out, lambda chunk, gen: chunk.normal_(generator=gen))

    def normal_like(self, like: torch.Tensor) -> torch.Tensor:
        """A new contiguous tensor like ``like`` of N(0, 1) draws."""
        return self.normal_(torch.empty_like(like, memory_format=torch.contiguous_format))

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "rank": self.rank,
            "device_type": self.device.type,
            "states": [generator.get_state() for generator in self.generators],
            "philox_counter": self.philox_counter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Continue the saved streams; False (nothing changed) if they were saved for another
        rank, seed or kind of device, whose streams these cannot continue."""
        same = (state["seed"], state["rank"], state["device_type"]) == (
            self.seed,
            self.rank,
            self.device.type,
        ) and len(state["states"]) == len(self.generators)
        if same:
            for generator, saved in zip(self.generators, state["states"]):
                generator.set_state(saved)
            self.philox_counter = int(state.get("philox_counter", 0))
        return same
