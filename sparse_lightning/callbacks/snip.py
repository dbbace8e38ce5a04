"""SNIP-style pruning: the connection sensitivity |w * dL/dw| of Lee et al. (2019), "SNIP:
Single-shot Network Pruning based on Connection Sensitivity", as the score of gradual pruning.

The gradient is that of the optimiser step just taken (Lightning clears gradients only before
the next backward), so scoring costs one multiply per weight and no extra pass. With
``method.schedule.begin_step=0 method.schedule.end_step=1`` it prunes once, after the first step,
close to SNIP's single shot at initialisation; by default it runs on the cubic schedule of
magnitude pruning. A weight that got no gradient scores 0 (pruned first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class SnipScore:
    """|w * grad|."""

    name = "snip"

    def __call__(self, weights: Sequence[torch.Tensor], step: int) -> list[torch.Tensor]:
        return [
            torch.zeros_like(w) if w.grad is None else (w.detach() * w.grad).abs_() for w in weights
        ]
