"""Pure mask arithmetic: scores and current masks in, new masks out (no Trainer, no modules).

Every mask-deciding method (magnitude, random) is "keep the highest-scoring entries among those
still alive"; only the score differs. Pruned entries get score -inf, so a mask only shrinks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SAMPLED_SELECT_MIN = 1 << 16  # below this many entries a plain kthvalue is as fast
SAMPLE_SIZE = 4096


def keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask of exactly ``n_keep`` highest-scoring entries (ties broken by position).

    ``kthvalue`` finds the threshold in linear time; entries tied at the threshold are admitted
    in index order until the count is exact, so sparsity never overshoots by a tie.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if n_keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if n_keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = kth_smallest(flat, n - n_keep)
    keep = flat > threshold
    deficit = n_keep - int(keep.sum())
    if deficit > 0 and bool(threshold > float("-inf")):  # never admit a pruned (-inf) entry
        tied = (flat == threshold).nonzero().squeeze(1)[:deficit]
        keep[tied] = True
    return keep.view_as(scores)


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor: exactly ``flat.kthvalue(k).values``.

    Large tensors use sampled selection (Floyd & Rivest 1975): the sorted values of an evenly
    strided sample bracket the answer with a margin of 3 standard deviations of the sample
    quantile, and ``kthvalue`` runs only on the few entries inside the bracket. If the bracket
    misses (never observed, but possible) the full ``kthvalue`` answers. Deterministic, so
    every DDP rank finds the same value.
    """
    n = flat.numel()
    if n < SAMPLED_SELECT_MIN:
        return flat.kthvalue(k).values
    sample = flat[:: n // SAMPLE_SIZE].sort().values
    m = sample.numel()
    rank = k / n * m
    margin = 3.0 * math.sqrt(m * (k / n) * (1 - k / n)) + 2.0
    low = sample[max(int(math.floor(rank - margin)), 1) - 1]
    high = sample[min(int(math.ceil(rank + margin)), m) - 1]
    below = int((flat < low).sum())
    inside = flat[(flat >= low) & (flat <= high)]
    j = k - below
    if 1 <= j <= inside.numel():
        return inside.kthvalue(j).values
    return flat.kthvalue(k).values


def alive_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores with already-pruned entries ranked below every live one (in place on ``scores``,
    a fresh tensor from a method's ``scores``, to spare a copy of every weight)."""
    return scores.float().masked_fill_(~mask, float("-inf"))


def n_to_keep(numel: int, sparsity: float) -> int:
    """Entries kept at ``sparsity``: the pruned count rounds to the nearest element."""
    return numel - int(round(sparsity * numel))


def layerwise_masks(
    scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], sparsities: Sequence[float]
) -> list[torch.Tensor]:
    """Each tensor pruned on its own to its own sparsity; never revives a pruned entry
    (pruned entries score -inf and ``keep_top`` never admits one)."""
    return [
        keep_top(alive_scores(s, m), n_to_keep(m.numel(), sp))
        for s, m, sp in zip(scores, masks, sparsities)
    ]


def global_masks(
    scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], sparsity: float
) -> list[torch.Tensor]:
    """All tensors ranked together so that ``sparsity`` holds over their union."""
    flat = torch.cat([alive_scores(s, m).reshape(-1) for s, m in zip(scores, masks)])
    keep = keep_top(flat, n_to_keep(flat.numel(), sparsity))
    out, start = [], 0
    for m in masks:
        out.append(keep[start : start + m.numel()].view_as(m))
        start += m.numel()
    return out
