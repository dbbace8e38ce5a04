"""Bad input stops the run before training with one readable line and a non-zero exit."""

import pytest

from tests.conftest import TINY, run_cli

CASES = {
    "target at 1": (["sparsity.target=1.0"], "1.0"),
    "negative target": (["sparsity.target=-0.5"], "-0.5"),
    "begin after end": (["method.begin_step=30", "method.end_step=20"], "begin_step=30"),
    "zero frequency": (["method.frequency=0"], "frequency=0"),
    "end after the budget": (["method.end_step=1000"], "end_step=1000"),
    "exclude matching nothing": (["method.exclude=[nothing.*]"], "nothing.*"),
    "override matching nothing": (["+method.layer_sparsity={nope: 0.5}"], "nope"),
    "unknown scope": (["method.scope=everything"], "everything"),
    "unknown method": (["method=pruneall"], "pruneall"),
    "unknown key": (["method.begin=3"], "begin"),
}


@pytest.mark.parametrize("name", sorted(CASES), ids=lambda n: n.replace(" ", "_"))
def test_bad_value_is_named_in_one_line_before_any_output(tmp_path, name):
    overrides, bad_value = CASES[name]
    run_dir = tmp_path / "run"
    result = run_cli(run_dir, *TINY, *overrides, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if bad_value in line]
    assert error_lines, result.stderr[-2000:]
    assert not (run_dir / "results.json").exists() and not (run_dir / "init.pt").exists()
