"""Inference time of exported sparse models on CPU: the dense forward against a CSR forward.

    python bench/inference.py [--sparsities 0.9 0.95 0.98] [--batch-sizes 1 64] [--repeats 30]
                              [--threads 2] [--models linear_stack cnn1d]
    python bench/inference.py --run <run folder> [--batch-sizes ...]   # a trained run's weights

Models: ``linear_stack``, four ``Linear(1024, 1024)`` with ReLU between them (inputs (batch,
1024)); ``cnn1d``, the default model as ``sparse-train`` builds it (``conf/model/cnn1d.yaml``,
composed by Hydra; inputs (batch, 1, 40)), in eval mode. Each is magnitude-pruned to each
``--sparsities`` level, uniformly (every conv / linear weight that the default selection prunes
keeps its own top ``1 - s`` by |w|), pruned entries set to zero, and exported through
``sparse_lightning.export.to_sparse`` (CSR matrices; conv kernels as (out, in * k)). With
``--run``, a finished ``sparse-train`` run's own weights and masks instead (``export.load_run``;
its model must be cnn1d-like: input (batch, ``model.in_channels``, ``model.length``)).

The dense forward is the model with its zeroed weights; the CSR forward is a copy of it whose
``Linear`` / ``Conv1d`` modules are replaced by ones computing ``torch.addmm(bias, W_csr, x^T)``
(MKL sparse times dense), a convolution as im2col (``Tensor.unfold``) followed by the same
product. Everything else (BatchNorm, ReLU, Flatten) is the same module in both. The two outputs
are checked to agree (``torch.allclose``, rtol 1e-4, atol 1e-5 x max |dense output|) before
anything is timed; a mismatch stops the benchmark.

Timing: under ``torch.inference_mode``, ``--threads`` torch threads, dense and CSR samples
interleaved in one process (A B, then B A, ...); a sample is ``inner`` forwards, with ``inner``
chosen so that one dense sample takes about 2 ms; the figure is the median per forward. Prints
``name: value`` lines per case, then a markdown table with speedup = dense time / CSR time
(below 1: the CSR forward is slower). On a machine busy with other work, 2 OpenMP / MKL threads
stall (tens of milliseconds per call, dense and CSR alike): use ``--threads 1`` there.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from sparse_lightning.config import compose_config
from sparse_lightning.export import load_run, to_sparse
from sparse_lightning.pruning import layerwise_masks
from sparse_lightning.run.folder import read_results
from sparse_lightning.selection import default_prunable_names

MODELS = ("linear_stack", "cnn1d")
SAMPLE_S = 2e-3  # one dense sample lasts about this long (``inner`` forwards)
RTOL, ATOL = 1e-4, 1e-5  # atol relative to the output's largest magnitude

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class CSRLinear(nn.Module):
    """``nn.Linear`` with its weight as a CSR matrix: y = (W x^T + b)^T."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, None if bias is None else bias.unsqueeze(1)
        self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cols = x.reshape(-1, self.in_features).t()
        if self.bias is None:
            y = torch.mm(self.weight, cols)
        else:
            y = torch.addmm(self.bias, self.weight, cols)
        return y.t().reshape(*x.shape[:-1], self.out_features)


class CSRConv1d(nn.Module):
    """``nn.Conv1d`` (groups 1, dilation 1, zero padding) as im2col and a CSR product; the
    weight is the (out_channels, in_channels * kernel_size) matrix ``to_sparse`` stores."""

    def __init__(self, conv: nn.Conv1d, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1,) or conv.padding_mode != "zeros":
            raise SystemExit(f"bench/inference.py: no CSR path for {conv}")
        if isinstance(conv.padding, str):
            raise SystemExit(f"bench/inference.py: no CSR path for padding='{conv.padding}'")
        self.weight, self.bias = weight, None if bias is None else bias.unsqueeze(1)
        self.kernel, self.stride, self.padding = (
            conv.kernel_size[0],
            conv.stride[0],
            conv.padding[0],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, _ = x.shape
        x = F.pad(x, (self.padding, self.padding))
        patches = x.unfold(2, self.kernel, self.stride)  # (n, c, length_out, k)
        length = patches.shape[2]
        cols = patches.permute(1, 3, 0, 2).reshape(c * self.kernel, n * length)
        if self.bias is None:
            y = torch.mm(self.weight, cols)
        else:
            y = torch.addmm(self.bias, self.weight, cols)
        # (n, out_channels, length_out), contiguous: BatchNorm1d on the permuted view is 3-5x
        # slower than on a copy (measured on cnn1d's layers, batch 64)
        return y.reshape(-1, n, length).permute(1, 0, 2).contiguous()


def csr_model(model: nn.Module, exported: dict) -> nn.Module:
    """A copy of ``model`` whose layers with a CSR weight in ``exported`` (``to_sparse``'s
    output) compute with it; every other module is the same."""
    sparse = copy.deepcopy(model)
    state = exported["state_dict"]
    for name, module in list(sparse.named_modules()):
        weight = state.get(f"{name}.weight")
        if weight is None or weight.layout != torch.sparse_csr:
            continue
        bias = state.get(f"{name}.bias")
        if isinstance(module, nn.Linear):
            replacement: nn.Module = CSRLinear(weight, bias)
        elif isinstance(module, nn.Conv1d):
            replacement = CSRConv1d(module, weight, bias)
        else:
            raise SystemExit(
                f"bench/inference.py: no CSR path for {name} ({type(module).__name__})"
            )
        parent, _, attr = name.rpartition(".")
        setattr(sparse.get_submodule(parent) if parent else sparse, attr, replacement)
    return sparse


def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Uniform MP masks: every default-prunable weight keeps its own top (1 - s) by |w|."""
    params = dict(model.named_parameters())
    names = default_prunable_names(model)
    weights = [params[n].detach() for n in names]
    masks = layerwise_masks(
        [w.abs() for w in weights],
        [torch.ones_like(w, dtype=torch.bool) for w in weights],
        [sparsity] * len(weights),
    )
    return dict(zip(names, masks))


def pruned_state(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state_dict with pruned entries zero (what ``load_run`` returns for a run)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, keep in masks.items():
        state[name].mul_(keep)
    return state


def linear_stack(width: int = 1024, depth: int = 4) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(width, width)] + ([nn.ReLU()] if i < depth - 1 else [])
    return nn.Sequential(*layers)


def default_cnn1d() -> tuple[nn.Module, tuple[int, ...]]:
    """The default model as ``sparse-train`` composes it, and one example's input shape."""
    cfg = compose_config(["model=cnn1d"])
    return instantiate(cfg.model), (cfg.model.in_channels, cfg.model.length)


@dataclass
class Case:
    model: str
    sparsity: float
    batch: int
    dense_s: float
    csr_s: float
    max_rel_diff: float  # max |CSR - dense| / max |dense|

    @property
    def name(self) -> str:
        return f"{self.model}_s{round(self.sparsity * 100):02d}_b{self.batch}"

    @property
    def speedup(self) -> float:
        return self.dense_s / self.csr_s


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function; samples of ``inner`` calls, interleaved."""
    warm: list[float] = []
    for fn in fns.values():
        for _ in range(3):
            start = time.perf_counter()
            fn()
            warm.append(time.perf_counter() - start)
    inner = max(1, int(SAMPLE_S / max(min(warm[:3]), 1e-7)))  # from the first variant's calls
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def check_agree(label: str, dense: torch.Tensor, sparse: torch.Tensor) -> float:
    """Max |sparse - dense| / max |dense|; stops the benchmark unless the two outputs are
    allclose."""
    scale = float(dense.abs().max())
    atol = ATOL * scale
    diff = float((sparse - dense).abs().max())
    if sparse.shape != dense.shape or not torch.allclose(sparse, dense, rtol=RTOL, atol=atol):
        raise SystemExit(
            f"bench/inference.py: {label}: the CSR forward disagrees with the dense one "
            f"(max |diff| {diff:.3g}, max |dense| {scale:.3g}, shapes {tuple(sparse.shape)} / "
            f"{tuple(dense.shape)})"
        )
    return diff / scale if scale > 0 else diff


def time_model(
    label: str,
    model: nn.Module,
    masks: dict[str, torch.Tensor] | None,
    state: dict[str, torch.Tensor],
    sparsity: float,
    example_shape: Sequence[int],
    batch_sizes: Sequence[int],
    repeats: int,
) -> list[Case]:
    """Load ``state`` (pruned entries zero) into ``model``, export it with ``to_sparse`` and
    time dense against CSR at every batch size."""
    model.load_state_dict(state)
    model.eval()
    sparse = csr_model(model, to_sparse(state, masks)).eval()
    cases = []
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch in batch_sizes:
            x = torch.randn(batch, *example_shape, generator=generator)
            diff = check_agree(f"{label} batch {batch}", model(x), sparse(x))
            medians = interleaved_medians(
                {"dense": lambda x=x: model(x), "csr": lambda x=x: sparse(x)}, repeats
            )
            case = Case(label, sparsity, batch, medians["dense"], medians["csr"], diff)
            print(f"{case.name}_dense_us: {case.dense_s * 1e6:.1f}")
            print(f"{case.name}_csr_us: {case.csr_s * 1e6:.1f}")
            print(f"{case.name}_max_rel_diff: {case.max_rel_diff:.2e}")
            print(f"{case.name}_speedup: {case.speedup:.3f}", flush=True)
            cases.append(case)
    return cases


def synthetic_cases(models: Sequence[str], args: argparse.Namespace) -> list[Case]:
    cases = []
    for name in models:
        for sparsity in args.sparsities:
            torch.manual_seed(0)
            if name == "linear_stack":
                model, shape = linear_stack(args.width), (args.width,)
            else:
                model, shape = default_cnn1d()
            masks = magnitude_masks(model, sparsity)
            state = pruned_state(model, masks)
            cases += time_model(
                name, model, masks, state, sparsity, shape, args.batch_sizes, args.repeats
            )
    return cases


def run_cases(run_dir: Path, args: argparse.Namespace) -> list[Case]:
    """A finished run's own weights and masks, its model rebuilt from its overrides."""
    state, masks = load_run(run_dir)
    results = read_results(run_dir)
    cfg = compose_config(results.overrides)
    if "in_channels" not in cfg.model or "length" not in cfg.model:
        raise SystemExit(
            f"bench/inference.py: {run_dir}: --run needs a cnn1d-like model "
            "(model.in_channels and model.length give its input)"
        )
    model = instantiate(cfg.model)
    shape = (cfg.model.in_channels, cfg.model.length)
    label = f"run_{results.method}_{results.model}"
    return time_model(
        label, model, masks, state, results.sparsity, shape, args.batch_sizes, args.repeats
    )


def table(cases: Sequence[Case]) -> str:
    rows = [
        "| model | sparsity | batch | dense (us) | CSR (us) | speedup (dense / CSR) "
        "| max diff / max out |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        rows.append(
            f"| {c.model} | {c.sparsity:.2f} | {c.batch} | {c.dense_s * 1e6:.1f} | "
            f"{c.csr_s * 1e6:.1f} | {c.speedup:.2f} | {c.max_rel_diff:.1e} |"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=30, help="timed samples per variant")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--width", type=int, default=1024, help="linear_stack's layer width")
    parser.add_argument("--run", type=Path, help="time a finished sparse-train run instead")
    args = parser.parse_args(argv)
    if any(not 0 <= s < 1 for s in args.sparsities):
        parser.error("--sparsities must lie in [0, 1)")
    if any(b < 1 for b in args.batch_sizes) or args.repeats < 1 or args.threads < 1:
        parser.error("--batch-sizes, --repeats and --threads must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch: {torch.__version__}")
    print(f"threads: {torch.get_num_threads()}")
    print(f"mkl: {torch.backends.mkl.is_available()}", flush=True)
    cases = run_cases(args.run, args) if args.run else synthetic_cases(args.models, args)
    print()
    print(table(cases))


if __name__ == "__main__":
    main()
