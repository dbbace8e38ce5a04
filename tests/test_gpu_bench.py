"""bench/gpu.py --smoke: the GPU benchmark's code path (train's compose_config and assemble,
one Trainer.fit per model and method, timed steps) runs on CPU and reports every figure; its
2:4 section says it is skipped without CUDA, and its 2:4 pruning keeps the right entries."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import torch

from tests.conftest import run_command

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
METHODS = ["dense", "magnitude", "variational_dropout", "l0"]
MODELS = {"resnet": "images", "transformer": "tokens"}
FIGURE = re.compile(r"^(\w+): (\S+)$")


def expected_names() -> set[str]:
    names = set()
    for model, unit in MODELS.items():
        for method in METHODS:
            names.add(f"{model}_{method}_{unit}_per_s")
            if method != "dense":
                names.add(f"{model}_{method}_throughput_over_dense")
    return names


def test_smoke_run_reports_a_positive_figure_for_every_model_and_method(tmp_path: Path) -> None:
    result = run_command(
        [sys.executable, str(BENCH), "--smoke", "--methods", *METHODS], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = {}
    for line in result.stdout.splitlines():
        match = FIGURE.match(line)
        if match:
            figures[match[1]] = float(match[2])
    missing = expected_names() - figures.keys()
    assert not missing, f"missing figures {sorted(missing)} in:\n{result.stdout}"
    bad = {k: v for k, v in figures.items() if not (math.isfinite(v) and v > 0)}
    assert not bad, f"figures that are not positive numbers: {bad}"
    if not torch.cuda.is_available():
        assert "semi_structured: skipped (no CUDA device)" in result.stdout.splitlines()
    assert list(tmp_path.iterdir()) == [], "the benchmark wrote into its working folder"


def test_prune_2_4_keeps_the_two_largest_of_every_four_inputs() -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    weight = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, -2.5]])
    expected = torch.tensor([[0.0, -3.0, 2.0, 0.0, 0.0, 1.5, 0.0, -2.5]])
    assert torch.equal(bench.prune_2_4(weight), expected)
    weight = torch.randn(64, 128)
    pruned = bench.prune_2_4(weight)
    groups, kept = weight.reshape(-1, 4), pruned.reshape(-1, 4) != 0
    assert bool((kept.sum(dim=1) == 2).all())
    smallest_kept = groups.abs().masked_fill(~kept, float("inf")).min(dim=1).values
    largest_pruned = groups.abs().masked_fill(kept, -1.0).max(dim=1).values
    assert bool((smallest_kept >= largest_pruned).all())
    assert torch.equal(pruned[pruned != 0], weight[pruned != 0])
