"""Controlled VD / l0 (``method.control=target``) against the tuned fixed weights, on one model.

    python bench/control_grid.py --out multirun/control -- sparsity=s50,s90,s98 seed=0,1

Runs ``sparse-train -m method=variational_dropout,l0 method.control=target,fixed <overrides>``
on the joblib launcher (two jobs), then prints one line per (method, control, level): the
sparsity reached, the evaluation rule's sparsity just before the end (how closely the controller
tracked; the ranking settles the rest) and test accuracy (translation: tokenised BLEU), as mean
and spread over the seeds.
The sweep folder is kept, so ``sparse-report <out>`` tabulates it too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

METRICS = ("test/bleu_tok", "test/acc")  # the first a run has is shown (translation: BLEU)


def rule_before_finish(run: Path, steps: int) -> float:
    """The last ``sparsity/global`` the monitor logged before the final step."""
    (metrics,) = run.rglob("metrics.csv")
    logged = [
        (int(r["step"]), float(r["sparsity/global"]))
        for r in csv.DictReader(metrics.open())
        if r.get("sparsity/global")
    ]
    return max((s, v) for s, v in logged if s < steps)[1]


def control_override(controls: str) -> str:
    """A sweep over methods composes its first config with the default method, which has no
    ``control``: one value must be forced in (``++``), a list is applied per run."""
    return f"method.control={controls}" if "," in controls else f"++method.control={controls}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="sweep folder")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--controls", default="target,fixed", help="method.control values")
    parser.add_argument("--methods", default="variational_dropout,l0", help="method values")
    parser.add_argument("overrides", nargs="*", help="extra sparse-train overrides")
    args = parser.parse_args()
    command = [
        "sparse-train", "-m", f"method={args.methods}", control_override(args.controls),
        "logger=csv", "hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.n_jobs}",
        f"hydra.sweep.dir={args.out}", *args.overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    cells: dict[tuple, list[tuple[float, float, float]]] = defaultdict(list)
    for results_file in sorted(args.out.rglob("results.json")):
        r = json.loads(results_file.read_text())
        control = r["method_details"]["control"]
        before = rule_before_finish(results_file.parent, r["steps"])
        key = (r["model"], r["method"], control, r["target_sparsity"])
        metric = next(m for m in METRICS if m in r["metrics"])
        cells[key].append((r["sparsity"], before, r["metrics"][metric]))
    print(f"model method control target: reached, rule before the end, {metric} (mean +- sd, n)")
    for (model, method, control, target), values in sorted(cells.items()):
        reached, before, acc = zip(*values)
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(
            f"{model} {method} {control} {target:.2f}: {statistics.mean(reached):.4f}, "
            f"{statistics.mean(before):.3f}, {statistics.mean(acc):.4f} +- {spread:.4f} "
            f"(n={len(acc)})"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
