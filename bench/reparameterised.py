"""Cost of variational dropout and l0 training relative to dense training, on the CPU.

torchvision resnet18 (10 classes), batch 16, 64x64 inputs, SGD (momentum 0.9, weight decay):
one training step = forward, task loss + regulariser, backward, optimiser step. Every prunable
weight (all convs and the FC) is reparameterised, as ``method=variational_dropout|l0`` does.

Time: the three steps run interleaved in one process (dense, VD, l0, dense, ...) on two threads,
so load from other processes hits all three alike; the ratios are of medians.

Peak memory: each variant runs in a fresh subprocess that resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), records its RSS after imports and data, then builds the model and
takes three steps; the figure is peak RSS (``VmHWM``) minus that baseline, i.e. parameters,
gradients, optimiser state, activations and temporaries. A fresh process per variant keeps one
variant's allocator cache from hiding another's peak; torch has no CPU allocator statistics.

Prints ``name: value`` lines; ``main()`` is what ``bench/masking.py`` calls. ``--breakdown`` prints
where the VD and l0 step time goes (an ablation, see ``breakdown``); ``--backend
auto|native|torch`` chooses the implementation of the VD / l0 passes
(``sparse_lightning.layers.backends``).
"""

from __future__ import annotations

# No OMP_WAIT_POLICY here: PyTorch's OpenMP threads spin after each op by default, as in every
# training process, and passive waiting halves the dense step on two cores (129 ms against
# 64 ms on resnet18 here), which would flatter every ratio. Measure on an idle machine.
import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sparse_lightning.layers import L0_CLASSES, VD_CLASSES, optimizer_groups, reparameterise
from sparse_lightning.layers.backends import BACKENDS, use_backend
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.selection import default_prunable_names

KINDS = ("dense", "vd", "l0")
BATCH, SIZE, CLASSES = 16, 64, 10
WARMUP, ROUNDS = 3, 21  # the VD and l0 ratios vary by ~0.1 from run to run at 11 rounds
REG_WEIGHT = 1e-6


def build(kind: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    from torchvision.models import resnet18

    model = resnet18(num_classes=CLASSES)
    for name in default_prunable_names(model) if kind != "dense" else []:
        if kind == "vd":
            reparameterise(model, name, VD_CLASSES, log_sigma2_init=-10.0, threshold=3.0)
        else:
            reparameterise(model, name, L0_CLASSES)
    source = NoiseSource(seed=0)  # as the VD / l0 callbacks give every layer
    for layer in model.modules():
        if hasattr(layer, "noise_source"):
            layer.noise_source = source
    optimizer = torch.optim.SGD(
        optimizer_groups(model),
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-4,
        fused=True,  # as conf/task/*.yaml: one pass per tensor, no temporaries
    )
    return model.train(), optimizer


def make_step(kind: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model, optimizer = build(kind)
    layers = [m for m in model.modules() if hasattr(m, "regulariser")]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if layers:
            loss = loss + REG_WEIGHT * torch.stack([m.regulariser() for m in layers]).sum()
        loss.backward()
        optimizer.step()

    return step


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (BATCH,))


def interleaved_medians(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each step, the steps run in turn (A B C A B C ...)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(WARMUP + rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= WARMUP:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_times(rounds: int = ROUNDS) -> dict[str, float]:
    """Median seconds per training step of each kind, measured interleaved."""
    x, y = data()
    return interleaved_medians({kind: make_step(kind, x, y) for kind in KINDS}, rounds)


def breakdown(rounds: int = ROUNDS) -> dict[str, float]:
    """Where the VD and l0 steps' time goes, as ratios to the dense step: each method against
    its structure alone (VD: the same two convolutions, noise and optimiser with sigma^2 =
    exp(log_sigma2) and no KL; l0: weight theta * log_alpha, no gates, no noise) and l0 with its
    gates but constant noise. An ablation: the math functions are swapped while a step runs."""
    from sparse_lightning.layers import l0 as l0_math
    from sparse_lightning.layers import variational_dropout as vd_math

    real = {"vd": vd_math.variance_and_kl, "l0": l0_math.gated_weight_and_penalty}

    def vd_structure(theta, log_sigma2, workspace=None, grad_scale=1.0):
        return torch.exp(log_sigma2), theta.new_zeros(())

    def l0_structure(theta, log_alpha, noise=None, source=None, workspace=None, grad_scale=1.0):
        return theta * log_alpha, log_alpha.sum()

    class ConstantDraws:
        def uniform_(self, out, low, high):
            return out.fill_(0.3)

    def l0_constant_noise(theta, log_alpha, noise=None, source=None, workspace=None, **_):
        return real["l0"](theta, log_alpha, source=ConstantDraws(), workspace=workspace)

    def with_math(kind: str, math, step: Callable[[], None]) -> Callable[[], None]:
        module = vd_math if kind == "vd" else l0_math
        name = "variance_and_kl" if kind == "vd" else "gated_weight_and_penalty"

        def run() -> None:
            setattr(module, name, math)
            try:
                step()
            finally:
                setattr(module, name, real[kind])

        return run

    x, y = data()
    steps = {
        "dense": make_step("dense", x, y),
        "vd": make_step("vd", x, y),
        "vd_structure": with_math("vd", vd_structure, make_step("vd", x, y)),
        "l0": make_step("l0", x, y),
        "l0_constant_noise": with_math("l0", l0_constant_noise, make_step("l0", x, y)),
        "l0_structure": with_math("l0", l0_structure, make_step("l0", x, y)),
    }
    times = interleaved_medians(steps, rounds)
    ratios = {f"{name}_over_dense": t / times["dense"] for name, t in times.items()}
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    return ratios


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory_bytes(kind: str) -> int:
    """Run in a fresh process: peak RSS growth over building ``kind`` and three steps."""
    x, y = data()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status_kib("VmRSS")
    step = make_step(kind, x, y)
    for _ in range(3):
        step()
    return (_status_kib("VmHWM") - baseline) * 1024


def measure_memory(kind: str, backend: str) -> int:
    command = [sys.executable, __file__, "--memory", kind, "--backend", backend]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main(backend: str = "auto") -> dict[str, float]:
    """Print and return the four ratios (VD and l0 over dense: step time, peak memory), the
    VD / l0 passes run by ``backend``."""
    use_backend(backend)
    torch.set_num_threads(2)
    times = step_times()
    memory = {kind: measure_memory(kind, backend) for kind in KINDS}
    results = {
        "vd_step_over_dense": times["vd"] / times["dense"],
        "l0_step_over_dense": times["l0"] / times["dense"],
        "vd_memory_over_dense": memory["vd"] / memory["dense"],
        "l0_memory_over_dense": memory["l0"] / memory["dense"],
    }
    for name, value in results.items():
        print(f"{name}: {value:.3f}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--memory", choices=KINDS, help=argparse.SUPPRESS)  # one fresh process
    args = parser.parse_args()
    if args.memory:
        use_backend(args.backend)
        torch.set_num_threads(2)
        print(peak_memory_bytes(args.memory))
    elif args.breakdown:
        print(f"backend: {use_backend(args.backend)}")
        torch.set_num_threads(2)
        breakdown()
    else:
        print(f"backend: {use_backend(args.backend)}")
        main(args.backend)
