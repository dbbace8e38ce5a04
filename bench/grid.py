"""Wall time of the default small grid on the joblib launcher vs the sum of its runs' own times.

    python bench/grid.py                      # experiment=small_grid: 5 methods x 5 sparsities
    python bench/grid.py --n-jobs 2 --out multirun/bench_grid -- trainer.max_steps=300

Runs ``sparse-train -m experiment=small_grid hydra/launcher=parallel hydra.launcher.n_jobs=N``
(arguments after ``--`` are passed on as overrides), then reads every run's results.json.
``runs_sum_s`` adds the runs' own fit+test seconds (results.json "seconds"); ``grid_wall_s`` is
the whole command, process start-up and imports included. speedup = runs_sum / wall, parallel
efficiency = speedup / n_jobs. Prints ``name: value`` lines; the sweep folder is kept, so
``sparse-report <out>`` turns it into tables and figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-jobs", type=int, default=2, help="runs at a time (joblib workers)")
    parser.add_argument("--out", type=Path, default=None, help="sweep folder (default: a temp)")
    parser.add_argument("overrides", nargs="*", help="extra sparse-train overrides")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_grid_")) / "sweep"
    cmd = [
        sys.executable, "-m", "sparse_lightning.train", "-m", "experiment=small_grid",
        "hydra/launcher=parallel", f"hydra.launcher.n_jobs={args.n_jobs}",
        f"hydra.sweep.dir={out}", "logger=none", *args.overrides,
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline"}
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))]
    launched = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    seconds = sum(float(r["seconds"]) for r in runs)
    print(f"command: {' '.join(cmd[2:])}")
    print(f"sweep_dir: {out}")
    print(f"exit_code: {result.returncode}")
    print(f"runs_finished: {len(runs)}")
    print(f"runs_failed: {len(launched) - len(runs)}")
    print(f"n_jobs: {args.n_jobs}")
    print(f"grid_wall_s: {wall:.1f}")
    print(f"runs_sum_s: {seconds:.1f}")
    if runs:
        print(f"speedup: {seconds / wall:.2f}")
        print(f"parallel_efficiency: {seconds / wall / args.n_jobs:.2f}")
    for method in sorted({r["method"] for r in runs}):
        mine = [float(r["seconds"]) for r in runs if r["method"] == method]
        print(f"run_s_{method}: {sum(mine) / len(mine):.1f}")
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
