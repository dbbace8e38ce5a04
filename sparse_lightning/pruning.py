"""Pure mask arithmetic: scores and current masks in, new masks out (no Trainer, no modules).

Every mask-deciding method (magnitude, random) is "keep the highest-scoring entries among those
still alive"; only the score differs. Pruned entries get score -inf, so a mask only shrinks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


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
    threshold = flat.kthvalue(n - n_keep).values
    keep = flat > threshold
    deficit = n_keep - int(keep.sum())
    if deficit > 0:
        tied = (flat == threshold).nonzero().squeeze(1)[:deficit]
        keep[tied] = True
    return keep.view_as(scores)


def alive_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores with already-pruned entries ranked below every live one."""
    return scores.float().masked_fill(~mask, float("-inf"))


def n_to_keep(numel: int, sparsity: float) -> int:
    """Entries kept at ``sparsity``: the pruned count rounds to the nearest element."""
    return numel - int(round(sparsity * numel))


def layerwise_masks(
    scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], sparsities: Sequence[float]
) -> list[torch.Tensor]:
    """Each tensor pruned on its own to its own sparsity; never revives a pruned entry."""
    return [
        keep_top(alive_scores(s, m), n_to_keep(m.numel(), sp)) & m
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
        out.append(keep[start : start + m.numel()].view_as(m) & m)
        start += m.numel()
    return out
