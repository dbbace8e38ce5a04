"""What ``method.control=target`` costs per VD / l0 training step, against the fixed weight.

    python bench/control.py [--rounds 30]

The setting of ``bench/reparameterised.py`` (resnet18, batch 16, 64x64, SGD, every prunable
weight reparameterised), two steps interleaved in one process, medians over windows of
``EVERY`` steps (the controller measures once per window):

- fixed: loss = task + w * regulariser, w a Python float (``control=fixed``);
- target: the same with w the controller's multiplier (a device tensor), the regularised layers'
  gradient clipped to ``max_grad_norm`` every step (the callback's own
  ``on_before_optimizer_step``), plus, once per window, the evaluation-rule sparsity over all
  layers (one reduction, ``_evaluation_sparsity``) and one dual-ascent update
  (``SparsityController.update``).

Prints ``vd_controlled_step_over_fixed`` and ``l0_controlled_step_over_fixed`` (target: <= 1.02).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reparameterised import REG_WEIGHT, build, data  # noqa: E402
from sparse_lightning.callbacks import L0Regularization, VariationalDropout  # noqa: E402
from sparse_lightning.control import SparsityController  # noqa: E402
from sparse_lightning.schedules import PolynomialSchedule, RegulariserRamp  # noqa: E402

EVERY = 10  # conf/method/_regularised.yaml: controller.every_n_steps


def window(kind: str, controlled: bool) -> Callable[[], None]:
    """``EVERY`` training steps of ``kind`` ("vd" or "l0"), fixed or controlled."""
    model, optimizer = build(kind)
    x, y = data()
    layers = [m for m in model.modules() if hasattr(m, "regulariser")]
    method_class = VariationalDropout if kind == "vd" else L0Regularization
    controller = SparsityController(PolynomialSchedule(0.9, 0, 1000, EVERY), EVERY)
    method = method_class(
        REG_WEIGHT, RegulariserRamp(0, 1), target_sparsity=0.9, control="target",
        controller=controller,
    )  # fmt: skip
    method.layers = layers
    controller.start(sum(m.weight.numel() for m in layers), torch.device("cpu"))
    step_count = [0]

    def run() -> None:
        for _ in range(EVERY):
            optimizer.zero_grad(set_to_none=True)
            task = F.cross_entropy(model(x), y)  # the forward computes the regularisers
            weight = controller.weight() if controlled else REG_WEIGHT
            loss = task + weight * torch.stack([m.regulariser() for m in layers]).sum()
            loss.backward()
            if controlled:  # the regularised layers' gradient clipped while steering
                method.on_before_optimizer_step(None, None, optimizer)
            optimizer.step()
            step_count[0] += 1
        if controlled:
            controller.update(step_count[0], method._evaluation_sparsity())

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    for kind in ("vd", "l0"):
        runs = {"fixed": window(kind, False), "target": window(kind, True)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(args.rounds + 1):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                if i > 0:
                    times[name].append(time.perf_counter() - start)
        ratio = statistics.median(times["target"]) / statistics.median(times["fixed"])
        print(f"{kind}_controlled_step_over_fixed: {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
