"""bench/gpu.py --smoke: the GPU benchmark's code path (train's compose_config and assemble,
one Trainer.fit per model and method, timed steps) runs on CPU and reports every figure."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

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
    assert list(tmp_path.iterdir()) == [], "the benchmark wrote into its working folder"
