"""One rule for a run's identity: the sweep folder's name, run.json's recorded overrides and the
W&B run's name are the same overrides, and the same ones are ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sparse_lightning.config import compose_config
from sparse_lightning.launch import run_name
from sparse_lightning.resume import record_run
from sparse_lightning.run.identity import excluded_keys, identity_overrides, run_key
from tests.conftest import TINY, run_command, sparse_train

# what a user might type: kept, ignored (outputs, logging, reuse, a preset's name, paths)
OVERRIDES = [
    "sparsity=s95",
    "logger=wandb",
    "resume=false",
    "skip_finished=false",
    "seed=3",
    "+stage1_dir=/tmp/x",  # the key without its + prefix is what is ignored
    "init.save_rewind_step=2",
    "logger.project=other",  # a logger key is not the logger choice: Hydra keeps it, so do we
    "trainer.max_steps=40",
    "+trainer.limit_test_batches=2",
    "model.channels='[16,32,32]'",
]
NAME = "+trainer.limit_test_batches=2,logger.project=other,model.channels=[16,32,32],seed=3,sparsity=s95,trainer.max_steps=40"  # noqa: E501


def test_the_rule_keeps_what_changes_the_result_sorted_and_unquoted() -> None:
    assert run_key(OVERRIDES) == NAME
    assert identity_overrides(["~logger", "experiment=small_grid", "+init.mask_from=a"]) == []
    assert run_key([]) == ""


def test_sweep_folder_run_json_and_wandb_name_agree(tmp_path: Path) -> None:
    cfg = compose_config(OVERRIDES, return_hydra_config=True)
    assert cfg.hydra.sweep.subdir == NAME  # the sweep folder, named by Hydra
    record_run(tmp_path, OVERRIDES)
    recorded = json.loads((tmp_path / "run.json").read_text())["overrides"]
    assert ",".join(recorded).replace("'", "") == NAME
    HydraConfig.instance().set_config(cfg)
    try:
        assert run_name() == NAME
        assert OmegaConf.select(cfg, "logger.name") == NAME  # conf/logger/wandb.yaml
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize("experiment", [None, "small_grid", "lottery_stage1", "lottery_stage2"])
def test_every_preset_names_folders_by_the_one_rule(experiment: str | None) -> None:
    overrides = [f"experiment={experiment}"] if experiment else []
    cfg = compose_config(overrides, return_hydra_config=True)
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == excluded_keys()
    assert "experiment" not in cfg.hydra.job.override_dirname


def test_a_real_sweep_folder_is_named_as_its_run_json_records(tmp_path: Path) -> None:
    extra = ["seed=1", "resume=auto", "skip_finished=true", "data.val_size=100"]
    cmd = sparse_train("-m", f"hydra.sweep.dir={tmp_path}", *TINY, *extra)
    result = run_command(cmd)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    recorded = json.loads((run / "run.json").read_text())["overrides"]
    assert run.name == ",".join(recorded)
    assert "logger=none" not in recorded and "resume=auto" not in recorded
    assert "seed=1" in recorded and "trainer.max_steps=40" in recorded
