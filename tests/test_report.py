"""`sparse-report`: a small sweep on disk -> csv, the paper's table, both figures; bad input."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

from sparse_lightning import paper_results, report

LAYERS = {"conv.weight": 0.0, "fc.weight": 0.0}
# (method, target, seed) -> test/acc; chosen so every cell's mean and std are easy to check.
ACC = {
    ("dense", 0.0, 0): 0.80,
    ("dense", 0.0, 1): 0.82,
    ("magnitude", 0.5, 0): 0.78,
    ("magnitude", 0.5, 1): 0.74,
    ("magnitude", 0.9, 0): 0.70,
    ("magnitude", 0.9, 1): 0.60,
    ("random", 0.5, 0): 0.70,
    ("random", 0.9, 0): 0.40,
}


def write_run(root: Path, model: str, method: str, target: float, seed: int, acc: float) -> Path:
    run = root / f"method={method},model={model},seed={seed},sparsity={int(target * 100)}"
    run.mkdir(parents=True)
    results = {
        "method": method,
        "model": model,
        "data": "mnist1d",
        "init": "standard",
        "seed": seed,
        "target_sparsity": target,
        "sparsity": target * 0.99,
        "layer_sparsity": {"conv.weight": target * 0.8, "fc.weight": target},
        "metrics": {"test/acc": acc, "test/loss": 1.0 - acc},
        "steps": 40,
        "seconds": 1.5,
        "parameters": 1000,
        "overrides": [f"method={method}"],
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    for (method, target, seed), acc in ACC.items():
        write_run(root, "cnn1d", method, target, seed, acc)
    return root


def test_report_writes_the_papers_table_csv_and_figures(sweep: Path) -> None:
    assert report.main([str(sweep), "--no-progress"]) == 0

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    assert len(rows) == len(ACC)
    assert {(r["method"], float(r["target_sparsity"]), int(r["seed"])) for r in rows} == set(ACC)
    assert {float(r["test/acc"]) for r in rows} == set(ACC.values())

    table = (sweep / "results.md").read_text()
    mp90 = [100 * ACC[("magnitude", 0.9, s)] for s in (0, 1)]
    expected = f"{statistics.mean(mp90):.2f} ± {statistics.stdev(mp90):.2f}"
    assert expected == "65.00 ± 7.07"
    assert "| sparsity | magnitude | random |" in table
    assert "| 50 | 76.00 ± 2.83 | 70.00 |" in table
    assert f"| 90 | {expected} | 40.00 |" in table
    assert "dense: 81.00 ± 1.41 (2 runs)" in table
    achieved = table.split("Achieved sparsity (%)")[1]
    assert "| 90 | 89.10 ± 0.00 | 89.10 |" in achieved  # 100 * 0.9 * 0.99

    for name in ("tradeoff.png", "layers.png"):
        image = matplotlib.image.imread(sweep / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # something is drawn


def test_paper_numbers_are_drawn_only_for_paper_models(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "resnet50", "magnitude", 0.9, 0, 0.70)
    runs, _ = report.collect(tmp_path / "a", progress=False)
    labels = report.plot_tradeoff(runs, "test/acc", tmp_path / "a.png")
    assert {"magnitude", "paper: MP", "paper: Random", "paper: VD"} <= set(labels)

    write_run(tmp_path / "b", "cnn1d", "magnitude", 0.9, 0, 0.70)
    runs, _ = report.collect(tmp_path / "b", progress=False)
    labels = report.plot_tradeoff(runs, "test/acc", tmp_path / "b.png")
    assert labels == ["magnitude"]


def test_unreadable_and_older_runs_are_skipped_and_listed(
    sweep: Path, capsys: pytest.CaptureFixture
) -> None:
    (sweep / "broken").mkdir()
    (sweep / "broken" / "results.json").write_text("{not json")
    (sweep / "old").mkdir()
    (sweep / "old" / "results.json").write_text(json.dumps({"method": "magnitude", "acc": 0.5}))
    assert report.main([str(sweep), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped broken/results.json: unreadable" in err
    assert "skipped old/results.json: older format: missing model, seed" in err
    assert "## Skipped runs (2)" in (sweep / "results.md").read_text()
    assert len(list(csv.DictReader((sweep / "results.csv").open()))) == len(ACC)


def test_bad_folders_give_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report.main([str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sparse-report: error: no results.json below {tmp_path}")
    assert "\n" not in err

    assert report.main([str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text("{}")
    assert report.main([str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the 1 results.json" in err[0] and "older format" in err[0]

    write_run(tmp_path / "s", "cnn1d", "magnitude", 0.9, 0, 0.7)
    assert report.main([str(tmp_path / "s"), "--metric", "test/bleu", "--no-progress"]) == 2
    assert "--metric test/bleu is in no run" in capsys.readouterr().err


def test_console_script_shows_progress(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = subprocess.run(
        ["sparse-report", str(sweep), "--out", str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "reading runs: 100%" in result.stderr and "writing report: 100%" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "layers.png",
        "results.csv",
        "results.md",
        "tradeoff.png",
    ]


def test_paper_numbers_copy_matches_the_reference() -> None:
    assert paper_results.load(None) == paper_results.COPY
    if not paper_results.REFERENCE.is_file():
        pytest.skip("reference file not present")
    parsed = paper_results.parse_reference(paper_results.REFERENCE.read_text(encoding="utf-8"))
    assert parsed == paper_results.COPY
    assert parsed["resnet50"].values["MP"][90] == 73.91  # spot check against the paper
    assert paper_results.table_for("transformer_base", parsed) is parsed["transformer"]
    assert paper_results.table_for("transformer_tiny", parsed) is None
