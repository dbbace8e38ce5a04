"""Training batches as a pure function of (seed, step), so a resumed run sees the same data.

Lightning restores model, optimiser, schedulers and loop counters from a checkpoint, but a
shuffling DataLoader restarts its epoch with fresh randomness. Here the batch of optimiser step
t is slice t of an epoch-wise permutation seeded by (seed, epoch); a loader built after a restore
starts at the restored step, so an interrupted run continues with exactly the batches an
uninterrupted one would have seen. Each pass over the sampler starts at the step the trainer is
at (``current_step``), so Lightning's own epoch bookkeeping after a mid-epoch resume cannot
replay or skip batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


class StepIndexedBatchSampler(Sampler[list[int]]):
    """Yields the batches of steps ``current_step() .. total_steps - 1`` (no incomplete batch)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        total_steps: int,
        current_step: Callable[[], int] = lambda: 0,
    ) -> None:
        if batch_size > num_samples:
            raise ValueError(f"batch_size={batch_size} exceeds the {num_samples} samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.total_steps = total_steps
        self.current_step = current_step
        self.start_step = current_step()
        self.steps_per_epoch = num_samples // batch_size

    def batch(self, step: int) -> list[int]:
        """The sample indices of optimiser step ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self._permutation(epoch)
        return order[position * self.batch_size : (position + 1) * self.batch_size].tolist()

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, None
        for step in range(self.current_step(), self.total_steps):
            step_epoch, position = divmod(step, self.steps_per_epoch)
            if step_epoch != epoch:
                epoch, order = step_epoch, self._permutation(step_epoch)
            yield order[position * self.batch_size : (position + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0)
