"""The project as a user installs it: a real wheel, in a fresh virtual environment, run from a
folder that is not the checkout. Guards the package-data declaration in pyproject.toml (the Hydra
configs under sparse_lightning/conf and the native kernel source ship inside the wheel) and the
`sparse-train` console script, which must find its configs in the installed package, not in
the source tree or the current folder."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY, run_command, subprocess_env

# Looked up, not imported: importing setuptools here, after distutils is loaded, fails.
MISSING = [m for m in ("pip", "venv", "setuptools") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"building and installing a wheel offline needs {MISSING}"
)

REPO = Path(__file__).resolve().parents[1]
# What a checkout holds besides the source: never part of a build, and the build must not see
# (or write into) the shared tree's own build/ and egg-info folders.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".benchmarks", ".venv",
    "outputs", "multirun", "lightning_logs", "wandb", "toy", "*.ckpt", "*.so",
)  # fmt: skip
# The tiny budget of the other CLI tests, with 30 steps: one validation, seconds per run.
BUDGET = [o for o in TINY if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=30"]
TARGET = 0.9  # sparsity=s90, the default run's level


def installed_env() -> dict[str, str]:
    """The children's environment, with nothing that could lead `import sparse_lightning` back
    to the checkout: no PYTHONPATH (the repo root, in some setups) and no user site."""
    env = subprocess_env(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    return env


def check(cmd: list[str], **kwargs) -> str:
    """Run ``cmd`` and return its stdout; a failure shows the tail of its output."""
    result = run_command(cmd, env=installed_env(), **kwargs)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel` of the project, built from a copy of the checkout: building in place writes
    build/ and *.egg-info into the tree, which others edit and build at the same time."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    out = root / "dist"
    build = ["--no-deps", "--no-build-isolation", "--no-index"]  # offline, this interpreter's
    check([sys.executable, "-m", "pip", "wheel", str(source), *build, "-w", str(out)])
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {[w.name for w in wheels]}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed. torch, Hydra and pip itself come
    from the system site-packages (no network, no ensurepip)."""
    venv = tmp_path_factory.mktemp("env") / "venv"
    check([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    check([*pip, "install", "--no-deps", "--no-index", str(wheel)])
    return venv


def results_of(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    assert path.is_file(), f"no results.json in {run_dir}"
    return json.loads(path.read_text())


def config_dir_of(run_dir: Path) -> Path:
    """The folder Hydra composed the run's configs from (its primary config source)."""
    hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
    (main,) = [s for s in hydra.runtime.config_sources if s.provider == "main"]
    return Path(main.path)


def test_wheel_ships_the_configs_and_the_kernel_source(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = [
        "sparse_lightning/conf/train.yaml",
        "sparse_lightning/conf/method/*.yaml",
        "sparse_lightning/conf/tuned/default/l0/s90.yaml",  # three folders below conf/
        "sparse_lightning/layers/backends/kernels.c",
    ]
    missing = [pattern for pattern in shipped if not fnmatch.filter(names, pattern)]
    assert not missing, f"{wheel.name} lacks {missing}"


def test_the_environment_imports_the_wheels_copy_not_the_checkout(
    venv: Path, tmp_path: Path
) -> None:
    # The system site-packages holds an editable install of this checkout. Its finder
    # (setuptools' __editable__ .pth) appends itself to the end of sys.meta_path, so it answers
    # only for modules the path-based finder cannot find; the venv's site-packages comes before
    # the system one on sys.path, so the installed copy wins. This asserts that it does.
    where = "import sparse_lightning; print(sparse_lightning.__file__)"
    out = check([str(venv / "bin" / "python"), "-c", where], cwd=tmp_path)
    module = Path(out.strip()).resolve()
    assert module.is_relative_to(venv.resolve()), f"imported {module}, not the venv's copy"


def test_sparse_train_runs_from_an_empty_folder(venv: Path, tmp_path: Path) -> None:
    cwd, run_dir = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    check([str(venv / "bin" / "sparse-train"), f"hydra.run.dir={run_dir}", *BUDGET], cwd=cwd)
    results = results_of(run_dir)
    assert (results["method"], results["target_sparsity"]) == ("magnitude", TARGET)
    assert results["sparsity"] == pytest.approx(TARGET, abs=1e-3)
    assert config_dir_of(run_dir).is_relative_to(venv.resolve())
    assert not list(cwd.iterdir()), "the run wrote into the current folder"


def test_sparse_train_sweeps_from_an_empty_folder(venv: Path, tmp_path: Path) -> None:
    cwd, sweep = tmp_path / "cwd", tmp_path / "sweep"
    cwd.mkdir()
    grid = ["-m", f"hydra.sweep.dir={sweep}", "method=dense,magnitude"]
    check([str(venv / "bin" / "sparse-train"), *grid, *BUDGET], cwd=cwd)
    runs = {d.name: results_of(d) for d in sorted(sweep.iterdir()) if d.is_dir()}
    assert sorted(r["method"] for r in runs.values()) == ["dense", "magnitude"], list(runs)
    for name, results in runs.items():
        expected = 0.0 if results["method"] == "dense" else TARGET
        assert results["sparsity"] == pytest.approx(expected, abs=1e-3), name
        assert config_dir_of(sweep / name).is_relative_to(venv.resolve()), name
    assert not list(cwd.iterdir()), "the sweep wrote into the current folder"
