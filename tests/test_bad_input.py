"""Every bad value the project knows of stops the run before training: non-zero exit, one
readable line naming the value, no traceback, and no file of an earlier run changed."""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import TINY, run_cli, run_in_process


def snapshot(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("earlier")
    run_cli(run_dir, *TINY)
    return run_dir


@pytest.fixture(scope="module")
def not_a_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("not_a_run")
    (folder / "notes.txt").write_text("nothing to see")
    return folder


# name -> (overrides, text the error line must contain); {earlier} / {not_a_run} are folders.
CASES = {
    "target at 1": (["sparsity.target=1.0"], "1.0"),
    "negative target": (["sparsity.target=-0.5"], "-0.5"),
    "begin after end": (["method.begin_step=30", "method.end_step=20"], "begin_step=30"),
    "zero frequency": (["method.frequency=0"], "frequency=0"),
    "end after the budget": (["method.end_step=1000"], "end_step=1000"),
    "exclude matching nothing": (["method.exclude=[nothing.*]"], "nothing.*"),
    "include matching nothing": (["method.include=[nothing.*]"], "nothing.*"),
    "override matching nothing": (["+method.layer_sparsity={{nope: 0.5}}"], "pattern 'nope'"),
    "unknown scope": (["method.scope=everything"], "everything"),
    "unknown method": (["method=pruneall"], "pruneall"),
    "unknown sparsity level": (["sparsity=42"], "42"),
    "unknown key": (["method.begin=3"], "begin"),
    "unknown launcher": (["hydra/launcher=nowhere"], "nowhere"),
    "unknown resume value": (["resume=sometimes"], "sometimes"),
    "negative kl weight": (["method=variational_dropout", "method.kl_weight=-1"], "-1"),
    "non-finite l0 weight": (["method=l0", "method.weight=inf"], "inf"),
    "missing mask source": (["init=lottery", "init.mask_from=/no/such/run"], "/no/such/run"),
    "mask source not a run": (["init=scratch_e", "init.mask_from={not_a_run}"], "not_a_run"),
    "mask source of another model": (
        ["init=scratch_e", "init.mask_from={earlier}", "model.channels=[16,32,32]"],
        "weight",
    ),
    "zero budget factor": (
        ["init=scratch_b", "init.mask_from={earlier}", "init.budget_factor=0"],
        "budget_factor",
    ),
    "missing data folder": (
        ["data=imagenet", "data.root=/no/such/imagenet", "model=resnet18"],
        "/no/such/imagenet",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES), ids=lambda n: n.replace(" ", "_"))
def test_bad_value_is_one_readable_line_and_nothing_earlier_changes(
    tmp_path, earlier_run, not_a_run, name, capsys
):
    overrides, bad_value = CASES[name]
    overrides = [o.format(earlier=earlier_run, not_a_run=not_a_run) for o in overrides]
    before = snapshot(earlier_run)
    run_dir = tmp_path / "run"
    base = [o for o in TINY if not o.startswith("data.")] if "data=imagenet" in overrides else TINY
    code = run_in_process(run_dir, *base, *overrides)
    stderr = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if bad_value in line], stderr[-2000:]
    assert not (run_dir / "results.json").exists() and not (run_dir / "init.pt").exists()
    assert snapshot(earlier_run) == before


def test_a_corrupt_checkpoint_is_named_and_left_alone(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    code = run_in_process(tmp_path, *TINY)
    stderr = capsys.readouterr().err
    assert code != 0 and "Traceback" not in stderr
    assert "last.ckpt is unreadable" in stderr
    assert checkpoint.read_bytes() == b"not a checkpoint"


def test_a_results_json_of_another_run_is_never_overwritten(earlier_run):
    """Through the console script in its own process: exit status and stderr as a user sees them."""
    before = snapshot(earlier_run)
    result = run_cli(earlier_run, *TINY, "sparsity=50", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "belongs to a run with overrides" in result.stderr.strip().splitlines()[-1]
    assert snapshot(earlier_run) == before


def test_the_table_covers_every_known_bad_input():
    print(f"{len(CASES) + 2} bad-input cases")
    assert len(CASES) + 2 >= 20
