"""What MP masking costs per training step of the paper's two models, on CPU.

    python bench/paper_models.py [--repeats 10] [--threads 2]

ResNet-50 (batch 4 at 224x224, SGD Nesterov, label smoothing 0.1) and Transformer base
(d 512, 6+6 layers, 32k shared vocabulary; 8 pairs of 24 tokens, Adam), each trained for one
step at a time, dense and MP-masked (90 %, every conv/linear/embedding weight, masks applied by
the optimiser step hook exactly as ``SparsityCallback`` registers it) interleaved A B B A in one
process on 2 threads (``--threads``; on a machine busy with other work 2-thread OpenMP stalls,
use 1 there). The two variants share one model, so the arithmetic is identical and the
ratio is the masking overhead; ``mask_apply_over_dense_step`` times the hook's work alone (one
fused multiply over all masked weights) against the dense step, a steadier figure on a busy
machine. Prints ``name: value`` lines (seconds are medians).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparse_lightning.callbacks import MagnitudePruning
from sparse_lightning.models.resnet import build_resnet
from sparse_lightning.models.transformer import build_transformer
from sparse_lightning.schedules import PolynomialSchedule

Tensor = torch.Tensor


def masked(model: nn.Module, sparsity: float = 0.9) -> Callable[[], None]:
    """Prune ``model`` to ``sparsity`` with MP; returns the step-post hook body."""
    method = MagnitudePruning(PolynomialSchedule(sparsity, begin_step=0, end_step=1, frequency=1))
    mask_set = method.attach(model)
    method.update_masks(1)
    return mask_set.apply_


def resnet50_case(batch: int) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], Tensor]]:
    model = build_resnet("resnet50")
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))
    return model, opt, lambda: F.cross_entropy(model(x), y, label_smoothing=0.1)


def transformer_base_case(
    pairs: int, length: int
) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[], Tensor]]:
    model = build_transformer(32000)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.997), eps=1e-9)
    src = torch.randint(3, 32000, (pairs, length))
    tgt = torch.randint(3, 32000, (pairs, length))
    dec = torch.cat([torch.zeros(pairs, 1, dtype=torch.long), tgt[:, :-1]], dim=1)

    def loss() -> Tensor:
        logits = model(input_ids=src, decoder_input_ids=dec).logits
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), label_smoothing=0.1)

    return model, opt, loss


def ratio(name: str, case: tuple, repeats: int) -> None:
    model, opt, loss_fn = case
    model.train()
    apply_masks = masked(model)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    hook = None
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    step()  # warm-up: allocator, optimiser state
    for r in range(repeats):
        for variant in ("dense", "masked") if r % 2 == 0 else ("masked", "dense"):
            if variant == "masked":
                hook = opt.register_step_post_hook(lambda *_: apply_masks())
            start = time.perf_counter()
            step()
            times[variant].append(time.perf_counter() - start)
            if hook is not None:
                hook.remove()
                hook = None
    dense, mask = statistics.median(times["dense"]), statistics.median(times["masked"])
    applies = []
    for _ in range(20):  # the hook's work alone: steadier than a difference of two steps
        start = time.perf_counter()
        apply_masks()
        applies.append(time.perf_counter() - start)
    apply = statistics.median(applies)
    print(f"{name}_dense_step_s: {dense:.3f}")
    print(f"{name}_masked_step_s: {mask:.3f}")
    print(f"{name}_masked_step_over_dense: {mask / dense:.3f}")
    print(f"{name}_mask_apply_s: {apply:.4f}")
    print(f"{name}_mask_apply_over_dense_step: {apply / dense:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ratio("resnet50", resnet50_case(batch=4), args.repeats)
    ratio("transformer_base", transformer_base_case(pairs=8, length=24), args.repeats)


if __name__ == "__main__":
    main()
