"""Every bad value the project knows of stops the run before training: exit status 2, exactly
one line ``sparse-train: error: ...`` on stderr naming the value, no traceback, and no file of an
earlier run changed. Errors Hydra finds (an unknown option or key, an unparsable override, an
unknown flag) stop even earlier: the run folder is never created."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException

from tests.conftest import TINY, run_cli, run_command, run_in_process, sparse_train

ERROR = "sparse-train: error: "
# Hydra turns an exception in one of its callbacks (the run-folder guard) into a warning: on a
# user's terminal that is a second message on stderr, so here it fails the test.
pytestmark = pytest.mark.filterwarnings("error:Callback .* raised:UserWarning")


def snapshot(folder: Path) -> dict[Path, str]:
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def error_line(stderr: str) -> str:
    """The one non-empty line of ``stderr``; fails if there are more, or a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith(ERROR), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("earlier")
    run_cli(run_dir, *TINY)
    return run_dir


@pytest.fixture(scope="module")
def not_a_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("not_a_run")
    (folder / "notes.txt").write_text("nothing to see")
    return folder


# Values the run's own checks refuse, after Hydra has composed the config and started the job.
# name -> (overrides, text the error line must contain); {earlier} / {not_a_run} are folders.
CHECKED = {
    "target at 1": (["sparsity.target=1.0"], "sparsity target 1.0 is outside"),
    "negative target": (["sparsity.target=-0.5"], "sparsity target -0.5 is outside"),
    "begin after end": (
        ["method.schedule.begin_step=30", "method.schedule.end_step=20"],
        "begin_step=30 must be smaller than end_step=20",
    ),
    "zero frequency": (["method.schedule.frequency=0"], "frequency=0 must be a positive"),
    "end after the budget": (["method.schedule.end_step=1000"], "end_step=1000 is after the last"),
    "exclude matching nothing": (
        ["method.selection.exclude=[nothing.*]"],
        "exclude pattern 'nothing.*'",
    ),
    "include matching nothing": (
        ["method.selection.include=[nothing.*]"],
        "include pattern 'nothing.*'",
    ),
    "override matching nothing": (
        ["+method.budget.layer_sparsity={{nope: 0.5}}"],
        "layer_sparsity pattern 'nope' matches no",
    ),
    "unknown scope": (["method.scope=everything"], "scope='everything' is not one of"),
    "unknown resume value": (["resume=sometimes"], "resume='sometimes' is not one of"),
    "negative kl weight": (
        ["method=variational_dropout", "method.kl_weight=-1"],
        "kl_weight=-1 is not allowed",
    ),
    "non-finite l0 weight": (["method=l0", "method.weight=inf"], "weight=inf is not allowed"),
    "missing mask source": (
        ["init=lottery", "init.mask_from=/no/such/run"],
        "init.mask_from=/no/such/run does not exist",
    ),
    "mask source not a run": (
        ["init=scratch_e", "init.mask_from={not_a_run}"],
        "is not a finished sparse-train run folder",
    ),
    "mask source of another model": (
        ["init=scratch_e", "init.mask_from={earlier}", "model.channels=[16,32,32]"],
        "is from a different model: '0.weight'",
    ),
    "zero budget factor": (
        ["init=scratch_b", "init.mask_from={earlier}", "init.budget_factor=0"],
        "init.budget_factor=0 must be",
    ),
    "missing data folder": (
        ["data=imagenet", "data.root=/no/such/imagenet", "model=resnet18"],
        "data.root=/no/such/imagenet is not a directory",
    ),
    "value a constructor refuses": (
        ["method.schedule.frequency=abc"],
        "frequency='abc' is not a whole number of steps",
    ),
    "unknown interpolation": (["seed=${{nope}}"], "Interpolation key 'nope' not found"),
}

# Errors Hydra raises while it composes the config: name -> (overrides, needles).
COMPOSITION = {
    "unknown method": (
        ["method=pruneall"],
        ["method=pruneall is not an option of 'method'", "magnitude", "variational_dropout"],
    ),
    "unknown sparsity level": (
        ["sparsity=s42"],
        ["sparsity=s42 is not an option of 'sparsity'", "s50, s60", "s98"],
    ),
    "sparsity as a number": (
        ["sparsity=90"],
        ["sparsity=90 is not an option of 'sparsity'", "s50, s60", "s98"],
    ),
    "sparsity as numbers in a sweep": (
        ["sparsity=s50,90", "-m"],
        ["sparsity=90 is not an option of 'sparsity'", "s50, s60", "s98"],
    ),
    "unknown launcher": (
        ["hydra/launcher=nowhere"],
        ["hydra/launcher=nowhere is not an option", "basic", "slurm_local"],
    ),
    "unknown key": (
        ["method.begin=3"],
        ["Could not override 'method.begin'", "+method.begin=3"],
    ),
    "unparsable override": (
        ["trainer.max_steps=["],
        ["cannot parse the override 'trainer.max_steps=['"],
    ),
    "append to an existing key": (
        ["+method.scope=layer"],
        ["An item is already at 'method.scope'", "++method.scope=layer"],
    ),
    "delete a missing key": (["~nosuch"], ["'nosuch' does not exist"]),
    "unknown flag": (["--nope"], ["unrecognized arguments: --nope"]),
}


@pytest.mark.parametrize("name", sorted(CHECKED), ids=lambda n: n.replace(" ", "_"))
def test_a_refused_value_is_one_line_and_nothing_earlier_changes(
    tmp_path: Path,
    earlier_run: Path,
    not_a_run: Path,
    name: str,
    capsys: pytest.CaptureFixture,
) -> None:
    overrides, needle = CHECKED[name]
    overrides = [o.format(earlier=earlier_run, not_a_run=not_a_run) for o in overrides]
    before = snapshot(earlier_run)
    run_dir = tmp_path / "run"
    base = [o for o in TINY if not o.startswith("data.")] if "data=imagenet" in overrides else TINY
    code = run_in_process(run_dir, *base, *overrides)
    line = error_line(capsys.readouterr().err)
    assert code == 2
    assert needle in line
    # Hydra's own .hydra/ and train.log only: no run.json, init.pt, checkpoint or result
    assert {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}
    assert snapshot(earlier_run) == before


@pytest.mark.parametrize("name", sorted(COMPOSITION), ids=lambda n: n.replace(" ", "_"))
def test_a_bad_override_is_one_line_before_the_run_folder_exists(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture
) -> None:
    overrides, needles = COMPOSITION[name]
    run_dir = tmp_path / "run"
    code = run_in_process(run_dir, *TINY, *overrides)
    line = error_line(capsys.readouterr().err)
    assert code == 2
    assert all(needle in line for needle in needles), line
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("argument", "first_words", "named"),
    [
        # one through the real console process; the in-process cases above cover the rest
        ("method=nope", "method=nope is not an option of 'method'", ["dense", "magnitude"]),
    ],
)
def test_the_console_script_shows_a_hydra_error_as_one_line_with_status_2(
    tmp_path: Path, argument: str, first_words: str, named: list[str]
) -> None:
    """As a user sees it, in a process of its own: Hydra alone would print 6-14 lines, exit 1."""
    run_dir = tmp_path / "run"
    result = run_command(sparse_train(f"hydra.run.dir={run_dir}", argument))
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert line.startswith(ERROR + first_words), line
    assert all(name in line for name in named), line
    assert not run_dir.exists()


def test_hydra_full_error_shows_the_traceback_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HYDRA_FULL_ERROR=1 keeps its Hydra meaning: the error is raised, not summarised."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(MissingConfigException, match="method/nope"):
        run_in_process(tmp_path / "run", "method=nope")


def test_a_corrupt_checkpoint_is_named_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    code = run_in_process(tmp_path, *TINY)
    line = error_line(capsys.readouterr().err)
    assert code == 2
    assert "last.ckpt is unreadable" in line
    assert checkpoint.read_bytes() == b"not a checkpoint"


def test_a_results_json_of_another_run_is_never_overwritten(earlier_run: Path) -> None:
    """Through the console script in its own process: exit status and stderr as a user sees them."""
    before = snapshot(earlier_run)
    result = run_cli(earlier_run, *TINY, "sparsity=s50", check=False)
    assert result.returncode == 2
    assert "belongs to a run with overrides" in error_line(result.stderr)
    assert snapshot(earlier_run) == before
