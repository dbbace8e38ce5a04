"""Mutation testing of the core: apply one-line mutations and run the tests that guard them.

A mutant is one operator or constant changed on one line (``<`` -> ``<=``, ``+`` -> ``-``,
``and`` -> ``or``, ``not x`` -> ``x``, ``True`` -> ``False``, a number n -> n + 1, ...). Each is
written into a scratch copy of the package (a ``git worktree`` of HEAD plus the working tree's
changes), the module's test files run there with ``-x`` and a timeout, and the mutant counts as
killed when they fail. Prints one line per mutant and the kill rate per module and overall:

    python bench/mutation.py --sample 60 --seed 0          # a reproducible sample
    python bench/mutation.py --module sparse_lightning/schedules.py --sample 0   # all of one

mutmut would do the same with more operators; on a 2-core machine its whole-suite stats pass
and per-mutant runs cost hours, where a mapped, sampled run costs minutes.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the test files that specify it
TARGETS: dict[str, list[str]] = {
    "sparse_lightning/pruning.py": ["tests/test_masks.py", "tests/test_global_scope.py"],
    "sparse_lightning/schedules.py": ["tests/test_schedules.py", "tests/test_global_scope.py"],
    "sparse_lightning/masks.py": ["tests/test_masks.py", "tests/test_magnitude_pruning.py"],
    "sparse_lightning/callbacks/gradual.py": [
        "tests/test_magnitude_pruning.py",
        "tests/test_global_scope.py",
    ],
    "sparse_lightning/callbacks/random.py": ["tests/test_random_pruning.py"],
    "sparse_lightning/callbacks/sparse_training.py": ["tests/test_sparse_training.py"],
    "sparse_lightning/control.py": ["tests/test_control.py"],
    "sparse_lightning/budgets.py": ["tests/test_budgets.py", "tests/test_masks.py"],
    "sparse_lightning/selection.py": ["tests/test_masks.py"],
    "sparse_lightning/callbacks/variational_dropout.py": [
        "tests/test_variational_dropout.py",
        "tests/test_shared_weights.py",
    ],
    "sparse_lightning/layers/variational_dropout.py": [
        "tests/test_variational_dropout.py",
        "tests/test_native_kernels.py",
    ],
    "sparse_lightning/layers/l0.py": ["tests/test_l0.py", "tests/test_native_kernels.py"],
    "sparse_lightning/init/variants.py": ["tests/test_lottery.py", "tests/test_paper_fidelity.py"],
    "sparse_lightning/init/augmented.py": ["tests/test_lottery.py", "tests/test_paper_fidelity.py"],
    "sparse_lightning/lr_schedules.py": ["tests/test_paper_fidelity.py"],
    "sparse_lightning/report.py": ["tests/test_report.py"],
    "sparse_lightning/resume.py": ["tests/test_resume.py"],
}

SWAPS: dict[type, type] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Add: ast.Sub, ast.Sub: ast.Add,
    ast.Mult: ast.Div, ast.Div: ast.Mult, ast.And: ast.Or, ast.Or: ast.And,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Pow: ast.Mult, ast.FloorDiv: ast.Div,
}  # fmt: skip


@dataclass(frozen=True)
class Mutant:
    module: str
    line: int
    index: int  # which mutable node of the module, in walk order
    description: str


def _mutable(node: ast.AST) -> str | None:
    """What mutating ``node`` would do, or None when it has no mutation."""
    if isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in SWAPS:
        return f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"
    if isinstance(node, ast.Compare) and type(node.ops[0]) in SWAPS:
        return f"{type(node.ops[0]).__name__} -> {SWAPS[type(node.ops[0])].__name__}"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return "drop not"
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return f"{node.value} -> {not node.value}"
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return f"{node.value!r} -> {node.value + 1!r}"
    return None


def _skip(node: ast.AST, docstrings: set[int]) -> bool:
    return id(node) in docstrings or getattr(node, "lineno", None) is None


def mutants_of(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / module).read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    found = []
    for index, node in enumerate(ast.walk(tree)):
        what = _mutable(node)
        if what is not None and not _skip(node, docstrings):
            found.append(Mutant(module, node.lineno, index, what))
    return found


def apply(module_source: str, mutant: Mutant) -> str:
    """The module's source with ``mutant`` applied (the module re-printed by ``ast.unparse``)."""
    tree = ast.parse(module_source)
    node = list(ast.walk(tree))[mutant.index]
    if isinstance(node, (ast.BinOp, ast.BoolOp)):
        node.op = SWAPS[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[0] = SWAPS[type(node.ops[0])]()
    elif isinstance(node, ast.UnaryOp):
        return _replace_not(tree, node)
    elif isinstance(node.value, bool):
        node.value = not node.value
    else:
        node.value = node.value + 1
    return ast.unparse(tree)


def _replace_not(tree: ast.AST, target: ast.UnaryOp) -> str:
    class DropNot(ast.NodeTransformer):
        def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
            self.generic_visit(node)
            return node.operand if node is target else node

    return ast.unparse(DropNot().visit(tree))


def scratch_copy() -> Path:
    """A copy of the working tree (tracked and new files) in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="mutation-"))
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in files:
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    return folder


def killed(copy: Path, mutant: Mutant, tests: list[str], timeout: int) -> bool:
    original = (ROOT / mutant.module).read_text()
    (copy / mutant.module).write_text(apply(original, mutant))
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    existing = [t for t in tests if (copy / t).exists()]
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *existing],
            cwd=copy, env=env, capture_output=True, timeout=timeout,
        )  # fmt: skip
        return result.returncode != 0
    except subprocess.TimeoutExpired:
        return True
    finally:
        (copy / mutant.module).write_text(original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=60, help="mutants to run (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--module", action="append", help="only these modules")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant")
    args = parser.parse_args()
    modules = args.module or list(TARGETS)
    pool = [m for module in modules for m in mutants_of(module)]
    if args.sample and args.sample < len(pool):
        pool = sorted(random.Random(args.seed).sample(pool, args.sample), key=lambda m: m.index)
    copy = scratch_copy()
    tally: dict[str, list[int]] = {}
    try:
        for mutant in pool:
            dead = killed(copy, mutant, TARGETS[mutant.module], args.timeout)
            tally.setdefault(mutant.module, [0, 0])[0] += dead
            tally[mutant.module][1] += 1
            state = "killed" if dead else "SURVIVED"
            print(f"{state}: {mutant.module}:{mutant.line} {mutant.description}", flush=True)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    for module, (dead, total) in tally.items():
        print(f"kill_rate {module}: {dead}/{total}")
    dead = sum(d for d, _ in tally.values())
    total = sum(t for _, t in tally.values())
    print(f"kill_rate: {dead}/{total} = {dead / max(total, 1):.3f}")


if __name__ == "__main__":
    main()
