"""Sweeps: every config composes; launcher x strategy checks; a `-m` grid on the joblib launcher
into sparse-report; the submitit local executor with DDP; a new ablation from a config folder
outside the repo (hydra.searchpath)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from sparse_lightning import report
from sparse_lightning.config import CONF_DIR
from sparse_lightning.errors import ConfigError
from sparse_lightning.launch import LauncherCheck, check_launcher
from tests.conftest import TINY, run_command, sparse_train


def shared(path: Path) -> bool:
    """A part that a group's options include (conf/method/_base.yaml), not an option."""
    return path.stem.startswith("_")


def options() -> list[tuple[str, str]]:
    """(group, option) for every yaml file below conf/ except the primary config and
    conf/tuned/, whose files a (tuning, method, sparsity) choice selects (tests/test_presets.py)."""
    found = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        group = path.parent.relative_to(CONF_DIR).as_posix()
        if group != "." and group.split("/")[0] not in ("tuning", "tuned") and not shared(path):
            found.append((group, path.stem))
    return found


def compose_train(*overrides: str, hydra_cfg: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_cfg)


def targets(node: Any) -> list[str]:
    """Every `_target_` in a config tree, read without resolving interpolations."""
    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            if key == "_target_":
                found.append(node[key])
            elif not OmegaConf.is_interpolation(node, key):
                found += targets(node._get_node(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            if not OmegaConf.is_interpolation(node, i):
                found += targets(node._get_node(i))
    return found


@pytest.mark.parametrize(("group", "option"), options(), ids=[f"{g}/{o}" for g, o in options()])
def test_every_config_composes_and_its_targets_import(group: str, option: str) -> None:
    choice = f"'{option}'" if option.replace(".", "").isdigit() else option
    cfg = compose_train(f"{group}={choice}", hydra_cfg=True)
    node = cfg.hydra.launcher if group == "hydra/launcher" else cfg
    assert targets(node), f"{group}={option} composes to no _target_ at all"
    for target in targets(node):
        assert callable(get_object(target)), target


# -- launcher x strategy ---------------------------------------------------------------------
def launcher_cfg(launcher: str, *overrides: str) -> DictConfig:
    cfg = compose_train(f"hydra/launcher={launcher}", *overrides, hydra_cfg=True)
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.mode = "MULTIRUN"
    return cfg


@pytest.mark.parametrize(
    ("launcher", "overrides"),
    [
        ("basic", ["trainer=ddp"]),
        ("basic", ["trainer=ddp", "trainer.strategy=ddp_spawn"]),
        ("parallel", []),
        ("joblib", ["trainer.devices=1"]),
        ("slurm_local", ["trainer=ddp", "trainer.strategy=ddp_spawn"]),
        ("slurm_local", []),
        ("slurm", ["trainer=ddp", "trainer.devices=4", "hydra.launcher.gpus_per_node=4",
                   "hydra.launcher.tasks_per_node=4"]),
        ("slurm", ["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=2",
                   "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=2",
                   "hydra.launcher.nodes=2"]),
        ("slurm", []),
    ],
)  # fmt: skip
def test_supported_combinations_pass(launcher: str, overrides: list[str]) -> None:
    cfg = launcher_cfg(launcher, *overrides)
    check_launcher(cfg, cfg.hydra)


@pytest.mark.parametrize(
    ("launcher", "overrides", "advice"),
    [
        ("parallel", ["trainer=ddp"], "hydra/launcher=parallel (joblib) with a one-process"),
        ("joblib", ["trainer=ddp", "trainer.strategy=ddp_spawn"], "or the basic launcher"),
        ("slurm_local", ["trainer=ddp"], "trainer.strategy=ddp_spawn"),
        ("slurm", ["trainer=ddp", "trainer.devices=4"], "tasks_per_node=<trainer.devices>"),
        ("slurm", ["trainer=ddp", "trainer.strategy=ddp_spawn", "trainer.devices=1",
                   "trainer.num_nodes=2"], "SLURM starts the processes itself"),
        ("slurm", ["hydra.launcher.tasks_per_node=2"], "one task per device"),
    ],
)  # fmt: skip
def test_unsupported_combinations_name_one_that_works(
    launcher: str, overrides: list[str], advice: str
) -> None:
    cfg = launcher_cfg(launcher, *overrides)
    with pytest.raises(ConfigError, match="launcher") as error:
        check_launcher(cfg, cfg.hydra)
    assert advice in str(error.value)
    assert "\n" not in str(error.value)


def test_a_single_run_is_never_refused() -> None:
    cfg = compose_train("hydra/launcher=parallel", "trainer=ddp", hydra_cfg=True)
    OmegaConf.set_struct(cfg, False)
    cfg.hydra.mode = "RUN"  # without -m the launcher is not used
    check_launcher(cfg, cfg.hydra)


def test_sweep_stops_before_launching_with_one_line(capsys: pytest.CaptureFixture) -> None:
    """What `sparse-train -m hydra/launcher=parallel trainer=ddp ...` runs before any job."""
    cfg = launcher_cfg("parallel", "trainer=ddp")
    callbacks = [get_object(c._target_)() for c in cfg.hydra.callbacks.values()]
    assert any(isinstance(c, LauncherCheck) for c in callbacks)
    with pytest.raises(SystemExit) as stop:
        for callback in callbacks:
            callback.on_multirun_start(config=cfg)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparse-train: error: launcher joblib cannot run trainer.strategy=ddp")
    assert len(err.splitlines()) == 1


# -- real sweeps -----------------------------------------------------------------------------
def multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`sparse-train -m ...` as a user runs it, into ``sweep_dir``."""
    cmd = sparse_train("-m", f"hydra.sweep.dir={sweep_dir}", *overrides)
    result = run_command(cmd, timeout=600, cwd=sweep_dir.parent)  # several runs
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def finished(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    return {
        p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))
    }


def test_small_grid_on_joblib_into_the_report(tmp_path: Path) -> None:
    sweep = tmp_path / "grid"
    multirun(
        sweep, "experiment=small_grid", "hydra/launcher=parallel", "method=dense,magnitude",
        "sparsity=s50,s90", *TINY,
    )  # fmt: skip
    runs = finished(sweep)
    # folders named by the overrides that change results; not by the preset or the logger
    named = sorted(o for o in TINY if not o.startswith("logger"))
    assert sorted(runs) == sorted(
        ",".join(sorted([*named, f"method={m}", "seed=0", f"sparsity={s}"]))
        for m in ("dense", "magnitude")
        for s in ("s50", "s90")
    )
    assert {(r["method"], r["target_sparsity"]) for r in runs.values()} == {
        ("dense", 0.0),
        ("magnitude", 0.5),
        ("magnitude", 0.9),
    }
    assert report.main([str(sweep), "--no-progress"]) == 0
    table = (sweep / "results.md").read_text()
    assert "| sparsity | magnitude |" in table and "| 90 |" in table
    assert "dense: " in table and "(2 runs)" in table


def test_submitit_local_executor_runs_ddp_spawn(tmp_path: Path) -> None:
    """The cluster path on this machine: a pickled job in a submitit subprocess, 2 gloo ranks."""
    sweep = tmp_path / "submitit"
    budget = [o for o in TINY if not o.startswith(("trainer.", "method"))]
    multirun(
        sweep, "hydra/launcher=slurm_local", "trainer=ddp", "trainer.strategy=ddp_spawn",
        "method=dense", "trainer.max_steps=10", "trainer.val_check_interval=10", *budget,
    )  # fmt: skip
    (run,) = finished(sweep).values()
    assert run["method"] == "dense" and run["metrics"]["test/acc"] > 0
    assert list(sweep.glob(".submitit/*/*_result.pkl")), "the job did not go through submitit"


ABLATION = {
    # a new model: the repo's CNN, narrower
    "model/cnn1d_narrow.yaml": """\
defaults:
  - cnn1d
  - _self_
channels: [8, 16, 16]
hidden: 32
""",
    # a new experiment overlay: that model, a per-layer sparsity map, and its own sweep
    "experiment/narrow_first_layer.yaml": """\
# @package _global_
defaults:
  - override /model: cnn1d_narrow
  - override /method: magnitude
method:
  budget:
    layer_sparsity: {"0.weight": 0.25}
hydra:
  sweeper:
    params:
      sparsity: s50,s90
""",
}


def test_new_ablation_from_a_config_folder_outside_the_repo(tmp_path: Path) -> None:
    configs = tmp_path / "my_configs"
    for name, text in ABLATION.items():
        (configs / name).parent.mkdir(parents=True, exist_ok=True)
        (configs / name).write_text(text)
    sweep = tmp_path / "ablation"
    multirun(sweep, f"hydra.searchpath=[file://{configs}]", "experiment=narrow_first_layer", *TINY)
    runs = finished(sweep)
    assert sorted(r["target_sparsity"] for r in runs.values()) == [0.5, 0.9]
    for run in runs.values():
        assert run["model"] == "cnn1d_narrow"
        assert run["parameters"] < 20_000  # the default cnn1d has ~198k
        assert run["layer_sparsity"]["0.weight"] == pytest.approx(0.25, abs=0.02)
        assert run["layer_sparsity"]["3.weight"] == pytest.approx(run["target_sparsity"], abs=0.01)


def test_an_unknown_launcher_names_the_available_ones() -> None:
    with pytest.raises(MissingConfigException) as error:
        compose_train("hydra/launcher=sge", hydra_cfg=True)
    message = str(error.value)
    assert "Could not find 'hydra/launcher/sge'" in message
    for name in ("basic", "parallel", "slurm", "slurm_local", "joblib", "submitit_local"):
        assert f"\t{name}\n" in message + "\n"
