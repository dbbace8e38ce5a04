"""Pure mask arithmetic: scores and current masks in, new masks out (no Trainer, no modules).

Every mask-deciding method (magnitude, random) is "keep the highest-scoring entries among those
still alive"; only the score differs. Pruned entries get score -inf, so a mask only shrinks.
An N:M pattern (``patterns.py``) adds one rule: the N highest of every group of M are never
pruned (``nm_masks``), and drop-and-grow regrows within each group what it lost (``nm_regrow``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from sparse_lightning.patterns import grouped, ungrouped

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


def top_n_per_group(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask of the ``n`` highest-scoring entries of every group of ``m`` (groups as in
    ``patterns.grouped``); ties go to the lower position, as in ``keep_top``, so every DDP rank
    and rerun picks the same entries."""
    groups = grouped(scores, m)
    order = groups.sort(dim=1, descending=True, stable=True).indices[:, :n]
    top = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, order, True)
    return ungrouped(top, scores.shape)


def nm_masks(
    scores: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    sparsities: Sequence[float],
    n: int,
    m: int,
) -> list[torch.Tensor]:
    """``layerwise_masks`` under an N:M pattern: the N highest-scoring live entries of every
    group are protected (score +inf), the rest compete as before.

    So along a schedule up to 1 - N/M no group falls below N, and at 1 - N/M exactly N per group
    remain: the kept count is then the protected count (and never below it: a schedule that
    starts above 1 - N/M, ``initial_sparsity``, still leaves N per group). Only live entries are
    protected, so a pruned entry never revives, even in a group that entered with fewer than N
    (a mask from elsewhere)."""
    out = []
    for s, mask, sp in zip(scores, masks, sparsities):
        alive = alive_scores(s, mask)
        protected = top_n_per_group(alive, n, m) & mask
        n_keep = max(n_to_keep(mask.numel(), sp), int(protected.sum()))
        out.append(keep_top(alive.masked_fill_(protected, float("inf")), n_keep))
    return out


def nm_regrow(grow_scores: torch.Tensor, kept: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The entries to grow so that every group of ``m`` holds ``n`` again after a drop: in each
    group as many as it lost (``n`` minus its ``kept`` count), those of highest ``grow_scores``
    among its entries not kept (the ones just dropped included); ties to the lower position.
    ``kept`` holds at most ``n`` per group; the result never overlaps it. One sort over
    (groups, m), no loop over groups."""
    held = grouped(kept, m)
    candidates = grouped(grow_scores.float(), m).masked_fill(held, float("-inf"))
    order = candidates.sort(dim=1, descending=True, stable=True).indices
    need = (n - held.sum(dim=1, keepdim=True)).clamp_(min=0)
    rank = torch.arange(m, device=kept.device).expand_as(order)
    grow = torch.zeros_like(held).scatter_(1, order, rank < need) & ~held
    return ungrouped(grow, kept.shape)
