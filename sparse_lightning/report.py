"""`sparse-report <sweep folder>`: every results.json below it -> the paper's tables and plots.

Writes into the folder (or ``--out``):
- ``results.csv``: one row per run;
- ``results.md``: per model/data/init, the paper's table layout: rows target sparsity, columns
  method, cells mean +- sample std over seeds (the dense baseline on a line above the table);
  for a paper model, the paper's table below it when the metric is the paper's;
- ``tradeoff.png``: metric vs achieved sparsity, one line per method; for a paper model
  (ResNet-50, Transformer) the paper's numbers dashed beside it (sparse_lightning.paper_results)
  when the metric is the one the paper reports, never another (sacreBLEU is not the paper's
  tokenised BLEU);
- ``layers.png``: per-layer sparsity per method (the paper's layer-distribution figure);
- ``flops.png``: metric vs training FLOPs (results.json ``flops.training.sparse``, log scale),
  one line per method over its sparsity levels and the dense baseline as a point, as RigL's
  accuracy-vs-FLOPs figures (Evci et al. 2020); runs without a FLOPs record are left out;
- ``curves.png``: per run logged with ``logger=csv``, sparsity reached against its target over
  training and the VD / l0 regulariser weight (the controller's multiplier under
  ``method.control=target``).
Runs whose results.json cannot be read, or is of an older format, are skipped and listed.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sparse_lightning import paper_results
from sparse_lightning.errors import ConfigError
from sparse_lightning.run.folder import RESULTS_FILE, read_json
from sparse_lightning.run.results import RunResults

# the paper's metric, where a run has it: its BLEU is the tokenised one (bleu_tok)
MAIN_METRICS = ("test/bleu_tok", "test/bleu", "test/acc")
# what each metric is, by the name after "{stage}/" (modules/translation.py logs both BLEUs)
METRIC_NOTES = {
    "bleu": "sacreBLEU, detokenised, 13a",
    "bleu_tok": "tokenised BLEU: Moses + compound split, multi-bleu, as the paper reports",
}
METHOD_ORDER = ("magnitude", "random", "variational_dropout", "l0")
CURVES = ("sparsity/global", "sparsity/target", "sparsity/reg_weight")  # run/monitor.py
DENSE = "dense"
UNIFORM = "uniform"  # the paper's layer budget: a method's label names any other
OUTPUTS = ("results.csv", "results.md", "tradeoff.png", "flops.png", "layers.png", "curves.png")
CSV_FIELDS = (
    "run", "method", "budget", "model", "data", "init", "seed", "target_sparsity", "sparsity",
    "steps", "seconds", "parameters",
)  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One finished run: where it is and its results.json."""

    path: Path  # folder of the run, relative to the sweep folder
    results: RunResults

    @property
    def group(self) -> tuple[str, str, str]:
        r = self.results
        return (r.model, str(r.data or ""), r.init.variant)

    @property
    def method(self) -> str:
        """The method whose masks the run has, and its layer budget unless uniform (the paper's):
        ``rigl (erk)``. A run that retrained another run's masks (method ``fixed_mask``) is
        tabled under its source's method, in its init's group."""
        method = self.results.init.source_method or self.results.method
        budget = self.results.method_details.get("budget", UNIFORM)
        return method if budget == UNIFORM or method == DENSE else f"{method} ({budget})"

    @property
    def dense(self) -> bool:
        return self.method == DENSE

    @property
    def target_percent(self) -> float:
        return round(100.0 * float(self.results.target_sparsity), 2)


def read_run(path: Path) -> RunResults:
    """A results.json as a record; raises ValueError saying why it cannot be used."""
    return RunResults.from_json(read_json(path))


def collect(folder: Path, progress: bool = True) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every readable run below ``folder``, and (path, reason) for each unreadable one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"sweep folder {folder} does not exist or is not a folder")
    paths = sorted(folder.rglob(RESULTS_FILE))
    if not paths:
        raise ConfigError(f"no {RESULTS_FILE} below {folder}: is it a finished sweep's folder?")
    runs, skipped = [], []
    for path in tqdm(paths, desc="reading runs", unit="run", disable=not progress):
        try:
            runs.append(Run(path.parent.relative_to(folder), read_run(path)))
        except ValueError as error:
            skipped.append((path.relative_to(folder), str(error)))
    return runs, skipped


def main_metric(runs: Sequence[Run], requested: str | None = None) -> str:
    """``requested`` if any run has it, else the paper's metric, else the first one seen."""
    names = sorted({k for run in runs for k in run.results.metrics})
    if requested is not None:
        if requested not in names:
            raise ConfigError(f"--metric {requested} is in no run; runs have {', '.join(names)}")
        return requested
    for name in MAIN_METRICS:
        if name in names:
            return name
    if not names:
        raise ConfigError("no run has any metric")
    return names[0]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_cell(values: Sequence[float], scale: float) -> str:
    if not values:
        return "-"
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def display_scale(metric: str) -> float:
    """Accuracies are shown in % as in the paper; other metrics as stored."""
    return 100.0 if metric.rsplit("/", 1)[-1].startswith("acc") else 1.0


def metric_label(metric: str, scale: float = 1.0) -> str:
    """``metric`` with its unit and, for BLEU, which BLEU it is."""
    unit = f"{metric} (%)" if scale == 100.0 else metric
    note = METRIC_NOTES.get(metric.rsplit("/", 1)[-1])
    return f"{unit} [{note}]" if note else unit


def methods_of(runs: Iterable[Run]) -> list[str]:
    names = {run.method for run in runs if not run.dense}
    ordered = [m for m in METHOD_ORDER if m in names]
    return ordered + sorted(names - set(ordered))


def by_group(runs: Sequence[Run]) -> dict[tuple[str, str, str], list[Run]]:
    groups: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    return dict(sorted(groups.items()))


# -- tables ----------------------------------------------------------------------------------
def write_csv(runs: Sequence[Run], path: Path) -> None:
    metrics = sorted({k for run in runs for k in run.results.metrics})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_FIELDS, *metrics])
        for run in sorted(runs, key=lambda r: str(r.path)):
            row = {
                **run.results.to_json(),
                "budget": run.results.method_details.get("budget", ""),
                "init": run.results.init.variant,
                "run": str(run.path),
            }
            writer.writerow(
                [row.get(k, "") for k in CSV_FIELDS]
                + [run.results.metrics.get(m, "") for m in metrics]
            )


def markdown(runs: Sequence[Run], metric: str, skipped: Sequence[tuple[Path, str]]) -> str:
    """The paper's table layout, one table per model/data/init, and beside it the sparsity each
    cell reached (VD and l0 set sparsity through their regulariser, not the target)."""
    scale = display_scale(metric)
    unit = metric_label(metric, scale)
    tables = paper_results.load()
    lines = ["# Sweep results", ""]
    for (model, data, init), group in by_group(runs).items():
        lines += [f"## {model} on {data}, init {init}: {unit}, mean ± std over seeds", ""]
        dense = [r.results.metrics[metric] for r in group if r.dense and _has(r, metric)]
        if dense:
            lines += [f"dense: {format_cell(dense, scale)} ({len(dense)} runs)", ""]
        sparse = [r for r in group if not r.dense and _has(r, metric)]
        if sparse:
            lines += _table(sparse, lambda r: r.results.metrics[metric], scale)
            lines += ["Achieved sparsity (%) of the runs above:", ""]
            lines += _table(sparse, lambda r: r.results.sparsity, 100.0)
        lines += _paper_table(paper_results.table_for(model, tables), metric, scale)
    if skipped:
        lines += [f"## Skipped runs ({len(skipped)})", ""]
        lines += [f"- `{path}`: {reason}" for path, reason in skipped] + [""]
    return "\n".join(lines)


def _table(runs: Sequence[Run], value: Callable[[Run], float], scale: float) -> list[str]:
    """Rows target sparsity (%), columns method, cells mean ± std of ``value`` over seeds."""
    methods = methods_of(runs)
    cells: dict[tuple[float, str], list[float]] = defaultdict(list)
    for run in runs:
        cells[(run.target_percent, run.method)].append(value(run))
    lines = ["| sparsity | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for target in sorted({t for t, _ in cells}):
        row = [format_cell(cells.get((target, m), []), scale) for m in methods]
        lines += [f"| {target:g} | " + " | ".join(row) + " |"]
    return [*lines, ""]


def _paper_table(table: paper_results.PaperTable | None, metric: str, scale: float) -> list[str]:
    """The paper's numbers for this model, only when they are the same metric as ``metric``;
    otherwise one line saying which metric they are."""
    if table is None:
        return []
    if table.metric != metric:
        return [
            f"The paper's numbers for this model are {metric_label(table.metric)}; they are not "
            f"set beside {metric} (`--metric {table.metric}` shows them).",
            "",
        ]
    columns = list(table.values)
    lines = [f"Paper (Gale et al. 2019), {table.caption}; {metric_label(metric, scale)}:", ""]
    lines += ["| sparsity | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for target in sorted({t for values in table.values.values() for t in values}):
        cells = [table.values[c].get(target) for c in columns]
        row = ["-" if v is None else f"{v * table.scale * scale:.2f}" for v in cells]
        lines += [f"| {target:g} | " + " | ".join(row) + " |"]
    return [*lines, ""]


def _has(run: Run, metric: str) -> bool:
    return metric in run.results.metrics


# -- figures ---------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(runs: Sequence[Run], metric: str, path: Path) -> list[str]:
    """Metric vs achieved sparsity (mean +- std over seeds), one line per method; the paper's
    numbers dashed for paper models; the dense baseline as a dotted horizontal line.
    Returns the legend labels drawn."""
    plt = _pyplot()
    scale = display_scale(metric)
    labels: list[str] = []
    groups = by_group(runs)
    tables = paper_results.load()
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    colours = _colours(plt, runs)
    for ax, ((model, data, init), group) in zip(axes[0], groups.items()):
        for method in methods_of(group):
            points: dict[float, list[Run]] = defaultdict(list)
            for run in group:
                if run.method == method and _has(run, metric):
                    points[run.target_percent].append(run)
            xs, ys, errs = [], [], []
            for _, cell in sorted(points.items()):
                xs.append(100 * statistics.fmean(r.results.sparsity for r in cell))
                mean, std = mean_std([scale * r.results.metrics[metric] for r in cell])
                ys.append(mean)
                errs.append(std)
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=colours[method],
                        label=method)  # fmt: skip
        dense = [r.results.metrics[metric] for r in group if r.dense and _has(r, metric)]
        if dense:
            ax.axhline(scale * statistics.fmean(dense), color="grey", linestyle=":", label="dense")
        table = paper_results.table_for(model, tables)
        if table is not None and table.metric != metric:
            ax.text(0.01, 0.01, f"paper's numbers are {table.metric}: not drawn", fontsize=7,
                    transform=ax.transAxes)  # fmt: skip
        if table is not None and table.metric == metric:
            for column, values in table.values.items():
                method = paper_results.METHODS.get(column, column)
                xs = sorted(values)
                ys = [values[x] * table.scale * scale for x in xs]
                ax.plot(xs, ys, linestyle="--", marker="x", color=colours.get(method), alpha=0.7,
                        label=f"paper: {column}")  # fmt: skip
        ax.set_title(f"{model} on {data} ({init})")
        ax.set_xlabel("achieved sparsity (%)")
        ax.set_ylabel(metric_label(metric, scale), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        labels += ax.get_legend_handles_labels()[1]
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return labels


def training_flops_of(run: Run) -> float:
    """The run's training FLOPs (sparse, whole run); 0 if its results.json has none."""
    return float(run.results.flops.training.get("sparse", 0.0))


def plot_flops(runs: Sequence[Run], metric: str, path: Path) -> list[str]:
    """Metric vs training FLOPs (log x; mean +- std over seeds of both), one line per method
    through its sparsity levels, the dense baseline as a point. Returns the legend labels."""
    plt = _pyplot()
    scale = display_scale(metric)
    labels: list[str] = []
    groups = by_group(runs)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    colours = _colours(plt, runs)
    for ax, ((model, data, init), group) in zip(axes[0], groups.items()):
        counted = [r for r in group if _has(r, metric) and training_flops_of(r) > 0]
        for method in [DENSE, *methods_of(counted)]:
            points: dict[float, list[Run]] = defaultdict(list)
            for run in counted:
                if run.method == method:
                    points[run.target_percent].append(run)
            if not points:
                continue
            xs, ys, xerrs, yerrs = [], [], [], []
            for _, cell in sorted(points.items()):
                x_mean, x_std = mean_std([training_flops_of(r) for r in cell])
                y_mean, y_std = mean_std([scale * r.results.metrics[metric] for r in cell])
                xs.append(x_mean)
                xerrs.append(x_std)
                ys.append(y_mean)
                yerrs.append(y_std)
            ax.errorbar(xs, ys, xerr=xerrs, yerr=yerrs, marker="s" if method == DENSE else "o",
                        capsize=3, color="grey" if method == DENSE else colours[method],
                        label=method)  # fmt: skip
        left_out = len(group) - len(counted)
        if left_out:
            ax.text(0.01, 0.01, f"{left_out} runs without FLOPs or {metric}: not drawn",
                    fontsize=7, transform=ax.transAxes)  # fmt: skip
        if counted:
            ax.set_xscale("log")
            ax.legend(fontsize=7)
        ax.set_title(f"{model} on {data} ({init})")
        ax.set_xlabel("training FLOPs (whole run, RigL's count)")
        ax.set_ylabel(metric_label(metric, scale), fontsize=8)
        ax.grid(alpha=0.3, which="both")
        labels += ax.get_legend_handles_labels()[1]
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return labels


def plot_layers(runs: Sequence[Run], path: Path) -> None:
    """Per-layer sparsity per method (mean over seeds), one panel per model and target."""
    plt = _pyplot()
    panels: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for run in runs:
        if not run.dense and run.results.layer_sparsity:
            panels[(run.results.model, run.target_percent)].append(run)
    panels = dict(sorted(panels.items()))
    colours = _colours(plt, runs)
    fig, axes = plt.subplots(
        max(len(panels), 1), 1, figsize=(10, 2.6 * max(len(panels), 1)), squeeze=False
    )
    for ax, ((model, target), panel) in zip(axes[:, 0], panels.items()):
        layers = list(dict.fromkeys(k for r in panel for k in r.results.layer_sparsity))
        methods = methods_of(panel)
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            cell = [r.results.layer_sparsity for r in panel if r.method == method]
            heights = [100 * statistics.fmean(ls.get(n, 0.0) for ls in cell) for n in layers]
            ax.bar([j + i * width for j in range(len(layers))], heights, width,
                   color=colours[method], label=method)  # fmt: skip
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
        ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("sparsity (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{model}, target {target:g} %", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no pruned runs", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The sparsity curves a run logged with ``logger=csv`` (``logs/metrics.csv``):
    {"sparsity/global" | "sparsity/target" | "sparsity/reg_weight": [(step, value), ...]}."""
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in CURVES}
    for metrics in sorted(Path(run_dir).rglob("metrics.csv")):
        with metrics.open(newline="") as handle:
            for row in csv.DictReader(handle):
                for name in CURVES:
                    if row.get(name):
                        curves[name].append((int(row["step"]), float(row[name])))
    return {name: points for name, points in curves.items() if points}


def plot_curves(folder: Path, runs: Sequence[Run], path: Path) -> None:
    """Over training, per run: the sparsity the method gives now against its scheduled target
    (top) and the regulariser weight of VD / l0 (bottom, log scale: the controller's multiplier
    under ``method.control=target``). Runs logged without the CSV logger have no curves."""
    plt = _pyplot()
    colours = _colours(plt, runs)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    drawn = 0
    for run in runs:
        curves = read_curves(Path(folder) / run.path)
        if "sparsity/global" not in curves:
            continue
        drawn += 1
        label = f"{run.method} {run.target_percent:g} % ({run.path})"
        colour = colours[run.method]
        top.plot(*zip(*curves["sparsity/global"]), color=colour, label=label, lw=1)
        if "sparsity/target" in curves:
            top.plot(*zip(*curves["sparsity/target"]), color=colour, ls=":", lw=1)
        if "sparsity/reg_weight" in curves:
            bottom.plot(*zip(*curves["sparsity/reg_weight"]), color=colour, lw=1)
    top.set_ylabel("sparsity (solid: reached, dotted: target)")
    bottom.set_ylabel("regulariser weight")
    bottom.set_xlabel("optimiser step")
    if bottom.lines:
        bottom.set_yscale("log")
    if drawn:
        top.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        top.text(0.5, 0.5, "no run logged sparsity curves (logger=csv)", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _colours(plt: Any, runs: Iterable[Run]) -> dict[str, Any]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = [*METHOD_ORDER, *sorted({r.method for r in runs} - set(METHOD_ORDER))]
    return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


# -- entry point -----------------------------------------------------------------------------
def report(
    folder: Path, out: Path | None = None, metric: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Write the six outputs; returns their paths, the runs and the skipped runs."""
    runs, skipped = collect(folder, progress=progress)
    if not runs:
        reasons = "; ".join(f"{p}: {why}" for p, why in skipped[:3])
        raise ConfigError(
            f"none of the {len(skipped)} results.json below {folder} is usable ({reasons})"
        )
    metric = main_metric(runs, metric)
    out = Path(out or folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in OUTPUTS}
    steps = [
        ("results.csv", lambda: write_csv(runs, paths["results.csv"])),
        ("results.md", lambda: paths["results.md"].write_text(markdown(runs, metric, skipped))),
        ("tradeoff.png", lambda: plot_tradeoff(runs, metric, paths["tradeoff.png"])),
        ("flops.png", lambda: plot_flops(runs, metric, paths["flops.png"])),
        ("layers.png", lambda: plot_layers(runs, paths["layers.png"])),
        ("curves.png", lambda: plot_curves(folder, runs, paths["curves.png"])),
    ]
    for _, write in tqdm(steps, desc="writing report", unit="file", disable=not progress):
        write()
    return {"paths": paths, "runs": runs, "skipped": skipped, "metric": metric}


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `sparse-report`."""
    parser = argparse.ArgumentParser(prog="sparse-report", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a sweep folder, e.g. multirun/<date>/<time>")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: folder)")
    parser.add_argument(
        "--metric", default=None, help="metric key (default: test/bleu_tok, test/bleu, test/acc)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        result = report(args.folder, args.out, args.metric, progress=not args.no_progress)
    except ConfigError as error:
        print(f"sparse-report: error: {error}", file=sys.stderr)
        return 2
    for path, reason in result["skipped"]:
        print(f"sparse-report: skipped {path}: {reason}", file=sys.stderr)
    names = ", ".join(str(p) for p in result["paths"].values())
    print(f"{len(result['runs'])} runs ({result['metric']}) -> {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
