"""`sparse-report`: a small sweep on disk -> csv, the paper's table, both figures; bad input."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from sparse_lightning import paper_results, report
from sparse_lightning.run.folder import read_results, write_results
from sparse_lightning.run.results import InitRecord, RunResults
from tests.conftest import TINY, run_cli

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
    results = RunResults(
        method=method,
        model=model,
        data="mnist1d",
        init=InitRecord("standard"),
        seed=seed,
        target_sparsity=target,
        sparsity=target * 0.99,
        layer_sparsity={"conv.weight": target * 0.8, "fc.weight": target},
        metrics={"test/acc": acc, "test/loss": 1.0 - acc},
        steps=40,
        seconds=1.5,
        parameters=1000,
        overrides=[f"method={method}"],
    )
    write_results(run, results)
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
    got = {(r["method"], float(r["target_sparsity"]), int(r["seed"])): r for r in rows}
    assert got.keys() == ACC.keys()
    for key, acc in ACC.items():  # each run's own accuracy, not a permutation of them
        assert float(got[key]["test/acc"]) == acc, key

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
        [sys.executable, "-m", "sparse_lightning.report", str(sweep), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "reading runs: 100%" in result.stderr and "writing report: 100%" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png",
        "flops.png",
        "layers.png",
        "results.csv",
        "results.md",
        "tradeoff.png",
    ]


def test_the_shipped_paper_numbers_are_the_papers():
    """Spot checks typed from the paper's tables (Gale et al. 2019, Figures 2-3 and the
    checkpoint list of state_of_sparsity/README.md), and every level of each column."""
    tables = paper_results.load()
    rn50, transformer = tables["resnet50"], tables["transformer"]
    assert rn50.values["MP"][90] == 73.91 and rn50.values["Random"][98] == 43.99
    assert rn50.values["VD"][95] == 71.91 and rn50.values["MP, first layer dense"][96.5] == 69.26
    assert transformer.values["l0"][50] == 26.72 and transformer.values["Random"][98] == 10.94
    assert transformer.values["MP"][90] == 23.26 and transformer.values["VD"][90] == 21.43
    for column in ("MP", "VD", "l0", "Random"):
        assert sorted(transformer.values[column]) == [50, 60, 70, 80, 90, 95, 98]
    assert (rn50.metric, rn50.scale, transformer.metric) == ("test/acc", 0.01, "test/bleu_tok")
    assert paper_results.table_for("transformer_base", tables) is transformer
    assert paper_results.table_for("transformer_tiny", tables) is None


def write_bleu_run(root: Path, model: str, method: str, target: float, bleu: float, tok: float):
    """A Transformer run with both BLEUs, which differ (sacreBLEU, and the paper's tokenised)."""
    run = write_run(root, model, method, target, 0, 0.0)
    results = read_results(run)
    results.data = "wmt14_en_de"
    results.metrics = {"test/bleu": bleu, "test/bleu_tok": tok, "test/loss": 2.0}
    write_results(run, results)


def test_the_papers_transformer_bleu_is_set_beside_our_tokenised_bleu_only(tmp_path: Path):
    table = paper_results.load()["transformer"]
    assert table.metric == "test/bleu_tok"  # get_ende_bleu.sh's BLEU ("MOSES BLEU")
    write_bleu_run(tmp_path, "transformer_base", "magnitude", 0.9, bleu=21.5, tok=22.5)
    runs, _ = report.collect(tmp_path, progress=False)
    assert report.main_metric(runs) == "test/bleu_tok"  # the paper's metric by default

    labels = report.plot_tradeoff(runs, "test/bleu_tok", tmp_path / "tok.png")
    assert {"magnitude", "paper: MP", "paper: VD", "paper: l0", "paper: Random"} <= set(labels)
    labels = report.plot_tradeoff(runs, "test/bleu", tmp_path / "sacre.png")
    assert labels == ["magnitude"]  # sacreBLEU is never drawn beside the paper's numbers

    tok = report.markdown(runs, "test/bleu_tok", [])
    assert "test/bleu_tok [tokenised BLEU" in tok and "| 90 | 22.50 |" in tok
    paper = tok.split("Paper (Gale et al. 2019)")[1]
    assert "| sparsity | MP | VD | l0 | Random |" in paper
    assert "| 90 | 23.26 | 21.43 | 20.05 | 20.67 |" in paper  # the paper's Table, MP 90 %
    sacre = report.markdown(runs, "test/bleu", [])
    assert "test/bleu [sacreBLEU" in sacre and "| 90 | 21.50 |" in sacre
    assert "Paper (Gale et al. 2019)" not in sacre and "23.26" not in sacre
    assert "The paper's numbers for this model are test/bleu_tok" in sacre


def test_a_retrained_mask_run_is_tabled_in_its_init_group_under_its_sources_method(
    sweep: Path,
) -> None:
    run = write_run(sweep, "cnn1d", "fixed_mask", 0.9, 0, 0.55)
    results = read_results(run)
    results.init = InitRecord("lottery", mask_from="stage1/sparsity=s90", source_method="random")
    write_results(run, results)
    assert report.main([str(sweep), "--no-progress"]) == 0

    table = (sweep / "results.md").read_text()
    lottery = table.split("init lottery")[1]
    assert "| sparsity | random |" in lottery.splitlines()[2]
    assert "| 90 | 55.00 |" in lottery
    standard = table.split("init standard")[1].split("init lottery")[0]
    assert "55.00" not in standard
    rows = {r["run"]: r for r in csv.DictReader((sweep / "results.csv").open())}
    row = rows[run.name]
    assert (row["method"], row["init"]) == ("fixed_mask", "lottery")


def test_the_sparsity_curves_a_run_logged_are_read_and_drawn(tmp_path: Path) -> None:
    """metrics.csv as the CSV logger writes it: one row per logging call, empty cells for the
    metrics that call did not log."""
    root = tmp_path / "sweep"
    run = write_run(root, "cnn1d", "l0", 0.9, 0, 0.9)
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_text(
        "epoch,sparsity/global,sparsity/reg_weight,sparsity/target,step,train/loss\n"
        "0,,,,9,2.3\n"
        "0,0.1,1e-09,0.0,10,\n"
        "0,0.5,2e-06,0.45,20,\n"
        "0,0.9,,0.9,40,\n"
    )
    assert report.read_curves(run) == {
        "sparsity/global": [(10, 0.1), (20, 0.5), (40, 0.9)],
        "sparsity/target": [(10, 0.0), (20, 0.45), (40, 0.9)],
        "sparsity/reg_weight": [(10, 1e-09), (20, 2e-06)],
    }
    out = report.report(root, progress=False)["paths"]["curves.png"]
    assert matplotlib.image.imread(out).shape[0] > 100
    assert report.read_curves(write_run(root, "cnn1d", "dense", 0.0, 0, 0.8)) == {}


def test_runs_with_another_layer_budget_are_tabled_as_their_own_method(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for budget in ("uniform", "erk"):
        run_cli(sweep / budget, "method=magnitude", f"budget={budget}", *TINY)
    assert report.main([str(sweep), "--no-progress"]) == 0

    header = next(
        line for line in (sweep / "results.md").read_text().splitlines() if "| sparsity |" in line
    )
    assert header.startswith("| sparsity | magnitude | magnitude (erk) |")
    rows = {r["run"]: r for r in csv.DictReader((sweep / "results.csv").open())}
    assert {(r["method"], r["budget"]) for r in rows.values()} == {
        ("magnitude", "uniform"),
        ("magnitude", "erk"),
    }
