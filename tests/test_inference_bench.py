"""bench/inference.py: the CSR forward of an exported model equals the dense one (checked before
anything is timed), and a tiny run prints every figure and the markdown table. No timing is
asserted."""

from __future__ import annotations

import functools
import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import TINY, run_cli, run_command

BENCH = Path(__file__).resolve().parents[1] / "bench" / "inference.py"
FIGURE = re.compile(r"^(\w+): (\S+)$")
TINY_TIMING = ["--batch-sizes", "1", "3", "--repeats", "1", "--threads", "1"]
TINY_BENCH = ["--sparsities", "0.9", "0.98", "--width", "64", *TINY_TIMING]


@functools.cache
def load_bench():
    """bench/inference.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_inference", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves annotations through it
    spec.loader.exec_module(module)
    return module


def figures(stdout: str) -> dict[str, str]:
    return {m[1]: m[2] for m in map(FIGURE.match, stdout.splitlines()) if m}


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| model | sparsity | batch | dense (us) | CSR (us) | speedup")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_csr_layers_equal_their_dense_modules_with_bias_stride_and_padding() -> None:
    bench = load_bench()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(3, 8, 3, stride=2, padding=1, bias=True),
        nn.ReLU(),
        nn.Conv1d(8, 4, 5, padding=0, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 4, 6, bias=True),
        nn.ReLU(),
        nn.Linear(6, 5, bias=False),
    ).eval()
    masks = bench.magnitude_masks(model, 0.5)
    assert sorted(masks) == ["0.weight", "2.weight", "4.weight", "6.weight"]
    state = bench.pruned_state(model, masks)
    model.load_state_dict(state)
    exported = bench.to_sparse(state, masks)
    sparse = bench.csr_model(model, exported)
    kinds = [type(m).__name__ for m in sparse]
    assert kinds == ["CSRConv1d", "ReLU", "CSRConv1d", "Flatten", "CSRLinear", "ReLU", "CSRLinear"]
    x = torch.randn(7, 3, 16)
    with torch.inference_mode():
        dense_out, sparse_out = model(x), sparse(x)
    assert dense_out.shape == (7, 5)
    torch.testing.assert_close(sparse_out, dense_out, rtol=1e-5, atol=1e-6)


def test_a_csr_forward_that_disagrees_stops_the_benchmark() -> None:
    bench = load_bench()
    torch.manual_seed(0)
    model = bench.linear_stack(width=16, depth=2).eval()
    masks = bench.magnitude_masks(model, 0.9)
    state = bench.pruned_state(model, masks)
    model.load_state_dict(state)
    exported = bench.to_sparse(state, masks)
    exported["state_dict"]["0.weight"].values().mul_(1.01)  # a wrong export
    sparse = bench.csr_model(model, exported)
    x = torch.randn(4, 16)
    with torch.inference_mode(), pytest.raises(SystemExit, match="disagrees with the dense one"):
        bench.check_agree("linear_stack", model(x), sparse(x))


def test_tiny_run_checks_agreement_and_prints_every_case_and_the_table(tmp_path: Path) -> None:
    result = run_command([sys.executable, str(BENCH), *TINY_BENCH], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = figures(result.stdout)
    cases = [
        f"{model}_s{level}_b{batch}"
        for model in ("linear_stack", "cnn1d")
        for level in ("90", "98")
        for batch in (1, 3)
    ]
    for case in cases:
        for figure in ("dense_us", "csr_us", "speedup"):
            value = float(found[f"{case}_{figure}"])
            assert math.isfinite(value) and value > 0, (case, figure, value)
        assert float(found[f"{case}_max_rel_diff"]) < 1e-4  # printed after the check
    rows = table_rows(result.stdout)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (model, level, batch)
        for model in ("linear_stack", "cnn1d")
        for level in ("0.90", "0.98")
        for batch in ("1", "3")
    ]
    assert list(tmp_path.iterdir()) == [], "the benchmark wrote into its working folder"


def test_run_option_times_a_trained_run_from_its_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_cli(run_dir, *TINY)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    cmd = [sys.executable, str(BENCH), "--run", str(run_dir), *TINY_TIMING]
    result = run_command(cmd, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("run_magnitude_cnn1d", "0.90", "1"),
        ("run_magnitude_cnn1d", "0.90", "3"),
    ]
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
