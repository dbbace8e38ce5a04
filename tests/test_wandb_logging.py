"""`logger=wandb` offline: a two-run sweep, read back from W&B's own run files (.wandb); the
sparsity monitor with any logger, in-process."""

from __future__ import annotations

import json
import struct
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from wandb.proto import wandb_internal_pb2

from sparse_lightning.callbacks import MagnitudePruning
from sparse_lightning.modules import ClassificationModule
from sparse_lightning.run.monitor import SparsityMonitor
from sparse_lightning.schedules import PolynomialSchedule
from tests.conftest import TINY, run_command, sparse_train

BLOCK = 32768  # W&B's .wandb file: a LevelDB-style log of wandb_internal_pb2.Record messages
HEADER = 7  # file header ":W&B" + magic (2) + version (1); chunk header crc (4) + len (2) + type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a .wandb file (wandb 0.31 ships no Python reader for it any more)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def key(item) -> str:
    """Keys with a "/" are stored split, in nested_key."""
    return item.key or "/".join(item.nested_key)


def keys(items) -> set[str]:
    return {key(item) for item in items}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("wandb") / "sweep"
    overrides = [o for o in TINY if not o.startswith("logger")]
    cmd = sparse_train("-m", f"hydra.sweep.dir={sweep_dir}", "logger=wandb", "method=magnitude")
    cmd += ["sparsity=s50,s90", "trainer.log_every_n_steps=10", *overrides]
    # offline, no API key, no stdin: it must never prompt for a key or upload
    result = run_command(cmd, timeout=600, cwd=sweep_dir.parent)  # several runs
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return sweep_dir


def test_each_run_of_a_sweep_is_its_own_offline_wandb_run(sweep: Path) -> None:
    runs = sorted(sweep.glob("*/results.json"))
    assert len(runs) == 2
    for results_file in runs:
        run_dir = results_file.parent
        (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        records = read_records(run_file)
        kinds = {r.WhichOneof("record_type") for r in records}
        assert {"run", "history", "summary", "exit"} <= kinds

        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.run_group == str(sweep)  # group = the sweep
        assert run.display_name == run_dir.name  # name = the overrides, as the folder
        sparsity = run_dir.name.split("sparsity=")[1].split(",")[0]
        assert set(run.tags) == {
            "method=magnitude",
            "model=cnn1d",
            f"sparsity={sparsity}",
            "init=standard",
        }
        config = {key(item): json.loads(item.value_json) for item in run.config.update}
        resolved_target = config["method"]["schedule"]["final_sparsity"]
        assert resolved_target == int(sparsity.removeprefix("s")) / 100
        assert config["trainer"]["max_steps"] == 40
        assert config["model"]["_target_"].endswith("cnn1d")

        history = set().union(
            *(keys(r.history.item) for r in records if r.WhichOneof("record_type") == "history")
        )
        expected = {
            "train/task_loss", "train/loss", "lr-SGD", "val/acc", "test/acc",
            "sparsity/target", "sparsity/global", "sparsity/layer/0.weight",
        }  # fmt: skip
        assert expected <= history
        assert any(k.startswith("sparsity/layers/") for k in history)  # the per-layer table
        assert any(k.startswith("sparsity/layers_chart") for k in history)  # its bar chart

        summary = {}
        for record in records:
            if record.WhichOneof("record_type") == "summary":
                for item in record.summary.update:
                    summary[key(item)] = item.value_json
        results = json.loads(results_file.read_text())
        for name in ("method", "sparsity", "target_sparsity", "metrics", "layer_sparsity"):
            assert json.loads(summary[name]) == results[name]


def test_sparsity_is_logged_on_update_steps_and_every_n_steps(sweep: Path) -> None:
    run_file = next(sweep.glob("*sparsity=s90*/wandb/offline-run-*/run-*.wandb"))
    points = {}
    for record in read_records(run_file):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {key(i): json.loads(i.value_json) for i in record.history.item}
        if "sparsity/global" in items:
            points[items["trainer/global_step"]] = (
                items["sparsity/target"],
                items["sparsity/global"],
            )
    # max_steps 40: pruning from step 4 to 24, every step; plus every 10 steps and the end
    assert set(points) == set(range(4, 25)) | {10, 20, 30, 40}
    assert points[4][0] == 0.0 and points[40] == (pytest.approx(0.9), pytest.approx(0.9, 1e-3))
    targets = [points[s][0] for s in sorted(points)]
    assert targets == sorted(targets)  # the cubic schedule only rises
    for target, achieved in points.values():
        assert achieved == pytest.approx(target, abs=0.01)  # masks follow the schedule


class MemoryLogger(Logger):
    """A real Lightning logger that keeps what it is given, to inspect in-process."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.logged.append((step, dict(metrics)))


def test_monitor_logs_only_on_update_and_every_n_steps_with_any_logger() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    module = ClassificationModule(model, partial(torch.optim.SGD, lr=0.1), num_classes=3)
    method = MagnitudePruning(PolynomialSchedule(0.8, begin_step=2, end_step=10, frequency=4))
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    logger = MemoryLogger()
    trainer = pl.Trainer(
        max_steps=16, logger=logger, callbacks=[method, SparsityMonitor(every_n_steps=5)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=100, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=4))
    points = {s: m for s, m in logger.logged if "sparsity/global" in m}
    assert sorted(points) == [2, 5, 6, 10, 15, 16]  # updates 2, 6, 10; every 5; the end
    masks = [m.weight_mask for m in model if isinstance(m, nn.Linear)]
    pruned = sum(int((~mask).sum()) for mask in masks) / sum(mask.numel() for mask in masks)
    assert points[16]["sparsity/global"] == pytest.approx(pruned)
    assert points[16]["sparsity/target"] == pytest.approx(0.8)
    s6 = 0.8 * (1 - (1 - (6 - 2) / (10 - 2)) ** 3)  # Zhu & Gupta at step 6
    assert points[6]["sparsity/target"] == pytest.approx(s6)
    assert points[6]["sparsity/global"] == pytest.approx(s6, abs=0.01)
    assert points[16]["sparsity/layer/0.weight"] == pytest.approx(0.8, abs=0.01)
