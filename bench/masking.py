"""What masking costs per training step, measured interleaved in one process.

    python bench/masking.py [--repeats 30] [--backend auto|native|torch]

Prints one `name: value` line per figure (ratios of medians; A B A B ... so that machine noise
hits every variant alike):
- masked_step_over_dense: resnet18 (batch 16, 64x64, SGD Nesterov) at 90 % MP sparsity, masks
  applied by sparse_lightning's optimiser step hook, over the same dense step;
- torch_prune_step_over_dense: the same with torch.nn.utils.prune's forward pre-hooks;
- mask_update_over_step: one MP mask update over the resnet50 weight set, over one resnet50
  training step (batch 8, 64x64);
- {set,rigl}_step_over_dense and {set,rigl}_update_step_over_dense: resnet18 as above at 90 %
  sparse from scratch, a plain step and an update step (the step, then drop-and-grow over every
  tensor: RigL reads the dense gradient the step left, SET draws random scores), over the dense
  step.
Then the reparameterised methods' figures (bench/reparameterised.py) when that module exists,
with the VD / l0 passes on ``--backend`` (``sparse_lightning.layers.backends``; default auto).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
import torchvision
from torch import nn

from sparse_lightning.callbacks import MagnitudePruning
from sparse_lightning.callbacks.sparse_training import GradientGrowth, RandomGrowth, SparseTraining
from sparse_lightning.layers.backends import BACKENDS, use_backend
from sparse_lightning.schedules import DropFractionSchedule, PolynomialSchedule


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
    )


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> Callable[[], None]:
    x, y = batch

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def magnitude_pruned(model: nn.Module, sparsity: float) -> tuple[nn.Module, MagnitudePruning]:
    """``model`` pruned by MagnitudePruning, masks kept by its optimiser step hook."""
    method = MagnitudePruning(PolynomialSchedule(sparsity, begin_step=0, end_step=1, frequency=1))
    method.attach(model)
    method.update_masks(step=1)
    return model, method


def torch_pruned(model: nn.Module, sparsity: float) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            torch_prune.l1_unstructured(module, "weight", amount=sparsity)
    return model


def interleaved_medians(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 3):
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_ratios(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=100)
    batch = (torch.randn(16, 3, 64, 64), torch.randint(0, 100, (16,)))
    dense = copy.deepcopy(base)
    masked, method = magnitude_pruned(copy.deepcopy(base), 0.9)
    pruned = torch_pruned(copy.deepcopy(base), 0.9)
    masked_opt = sgd(masked)
    masked_opt.register_step_post_hook(method._after_step)  # what on_train_start registers
    medians = interleaved_medians(
        {
            "dense": training_step(dense, sgd(dense), batch),
            "masked": training_step(masked, masked_opt, batch),
            "torch_prune": training_step(pruned, sgd(pruned), batch),
        },
        repeats,
    )
    assert bool((masked.conv1.weight[~masked.conv1.weight_mask] == 0).all())
    return {
        "masked_step_over_dense": medians["masked"] / medians["dense"],
        "torch_prune_step_over_dense": medians["torch_prune"] / medians["dense"],
    }


def update_ratio(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=1000)
    batch = (torch.randn(8, 3, 64, 64), torch.randint(0, 1000, (8,)))
    method = MagnitudePruning(PolynomialSchedule(0.9, begin_step=0, end_step=100, frequency=10))
    method.attach(model)
    masks = [entry.mask for entry in method.mask_set.entries]

    def update() -> None:  # a real update every time: from full masks to the step-50 sparsity
        for mask in masks:
            mask.fill_(True)
        method.update_masks(step=50)

    medians = interleaved_medians(
        {"step": training_step(model, sgd(model), batch), "update": update},
        max(repeats // 3, 5),
    )
    return {"mask_update_over_step": medians["update"] / medians["step"]}


def drop_grow_ratios(repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = torchvision.models.resnet18(num_classes=100)
    batch = (torch.randn(16, 3, 64, 64), torch.randint(0, 100, (16,)))
    dense = copy.deepcopy(base)
    fns = {"dense": training_step(dense, sgd(dense), batch)}
    for name, grow in (("set", RandomGrowth(seed=0)), ("rigl", GradientGrowth())):
        model = copy.deepcopy(base)
        schedule = DropFractionSchedule(begin_step=0, end_step=10**6, frequency=1)
        method = SparseTraining(0.9, grow=grow, schedule=schedule)
        method.attach(model)
        optimizer = sgd(model)
        optimizer.register_step_post_hook(method._after_step)
        step = training_step(model, optimizer, batch)

        def update_step(step=step, method=method, optimizer=optimizer) -> None:
            step()
            method.update_masks(1, [optimizer])

        fns[f"{name}_step"], fns[f"{name}_update_step"] = step, update_step
    medians = interleaved_medians(fns, repeats)
    return {f"{k}_over_dense": v / medians["dense"] for k, v in medians.items() if k != "dense"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    args = parser.parse_args()
    print(f"backend: {use_backend(args.backend)}", flush=True)
    torch.set_num_threads(2)
    figures = {
        **step_ratios(args.repeats),
        **update_ratio(args.repeats),
        **drop_grow_ratios(args.repeats),
    }
    for name, value in figures.items():
        print(f"{name}: {value:.3f}", flush=True)
    try:
        import reparameterised  # bench/reparameterised.py: VD and l0 figures
    except ImportError:
        return
    reparameterised.main(args.backend)


if __name__ == "__main__":
    main()
