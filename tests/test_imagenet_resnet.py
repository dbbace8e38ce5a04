"""ResNet-50 / ImageNet path: paper init, data module, lr schedule, preset values, CLI runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from sparse_lightning.config import CONF_DIR
from sparse_lightning.data.imagenet import ImageFolderDataModule
from sparse_lightning.data.toy import NUM_CLASSES, make_image_folder
from sparse_lightning.errors import ConfigError
from sparse_lightning.lr_schedules import warmup_step_decay
from sparse_lightning.models.resnet import build_resnet
from sparse_lightning.selection import select_prunable
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imagenet"), {"train": 8, "val": 2})


def test_resnet50_has_paper_init() -> None:
    torch.manual_seed(0)
    model = build_resnet("resnet50", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision ResNet-50
    blocks = [
        b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer
    ]
    assert len(blocks) == 16
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)  # last BN gamma = 0
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    fc = model.fc.weight
    assert abs(fc.mean().item()) < 2e-4
    assert fc.std().item() == pytest.approx(0.01, rel=0.01)
    assert torch.count_nonzero(model.fc.bias) == 0
    names = select_prunable(model)
    assert len(names) == 54 and names[0] == "conv1.weight" and names[-1] == "fc.weight"
    assert select_prunable(model, first_layer_dense=True)[0] == "layer1.0.conv1.weight"


def test_resnet_rejects_unknown_arch() -> None:
    with pytest.raises(ConfigError, match="resnet7"):
        build_resnet("resnet7")


def test_warmup_step_decay_matches_piecewise_definition() -> None:
    spe = 10  # steps per epoch
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    scheduler = warmup_step_decay(optimizer, steps_per_epoch=spe)
    lrs = []
    for _ in range(85 * spe):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = {0: 0.4 / 50, 24: 0.4 * 25 / 50, 49: 0.4, 50: 0.4, 299: 0.4, 300: 0.04,
                599: 0.04, 600: 0.004, 799: 0.004, 800: 0.0004, 849: 0.0004}  # fmt: skip
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr), step


def test_image_folder_data_module(image_root: Path) -> None:
    dm = ImageFolderDataModule(
        str(image_root), batch_size=4, num_workers=0, image_size=32, num_classes=NUM_CLASSES,
        pin_memory=False,
    )  # fmt: skip
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    assert len(dm.train_set) == 8 * NUM_CLASSES and len(dm.val_set) == 2 * NUM_CLASSES
    wrong = ImageFolderDataModule(str(image_root), num_workers=0, num_classes=1000)
    with pytest.raises(ConfigError, match="num_classes=1000"):
        wrong.setup("fit")
    with pytest.raises(ConfigError, match="not a directory"):
        ImageFolderDataModule(str(image_root / "missing"))


def test_sos_resnet50_preset_holds_paper_values() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ["experiment=sos_resnet50", "data.root=/data", "trainer.devices=4"])
    assert cfg.model.arch == "resnet50" and cfg.model.fc_init_std == 0.01
    assert cfg.model.zero_init_residual
    assert cfg.global_batch == 1024
    assert cfg.trainer.max_steps == 128_000
    opt = cfg.task.optimizer
    assert opt.lr == pytest.approx(0.4) and opt.momentum == 0.9 and opt.nesterov
    assert opt.weight_decay == 1e-4 and cfg.task.label_smoothing == 0.1
    sched = cfg.task.lr_scheduler
    assert sched.steps_per_epoch == 1251 and sched.warmup_epochs == 5
    assert list(sched.decay_epochs) == [30, 60, 80] and sched.gamma == 0.1
    assert cfg.method.score._target_.endswith("MagnitudeScore")
    schedule = cfg.method.schedule
    assert (schedule.begin_step, schedule.end_step, schedule.frequency) == (
        40_000,
        76_000,
        2000,
    )
    # lr and steps follow the global batch: 256 on one device
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        one = compose("train", ["experiment=sos_resnet50", "data.root=/data"])
    assert one.global_batch == 256 and one.trainer.max_steps == 512_000
    assert (
        one.task.optimizer.lr == pytest.approx(0.1)
        and one.task.lr_scheduler.steps_per_epoch == 5005
    )
    OmegaConf.resolve(one.method)


def laptop_overrides(root: Path) -> list[str]:
    return [
        "experiment=sos_resnet50",
        "model=resnet18",
        f"data.root={root}",
        f"data.num_classes={NUM_CLASSES}",
        "data.batch_size=8",
        "data.image_size=32",
        "data.num_workers=0",
        "data.pin_memory=false",
        "train_examples=40",
        "trainer.max_steps=40",
        "trainer.val_check_interval=40",
        "logger=none",
    ]


@pytest.mark.parametrize("method", ["magnitude", "dense", "variational_dropout"])
def test_sos_resnet50_runs_at_laptop_size(
    tmp_path: Path, image_root: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2-thread OpenMP stalls on a busy machine
    extra = ["sparsity=s90"]
    if method != "magnitude":  # each method with the preset's settings for it (conf/tuning/)
        extra = [f"method={method}", "sparsity=s90"]
    run_cli(tmp_path / "run", *laptop_overrides(image_root), *extra)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"] == "resnet18" and results["method"] == method
    assert results["steps"] == 40
    assert 0.0 <= results["metrics"]["test/acc"] <= results["metrics"]["test/acc5"] <= 1.0
    if (
        method == "variational_dropout"
    ):  # an outcome of the regulariser; 40 steps are far too few for 90 %
        assert 0.0 <= results["sparsity"] < 1.0
    else:
        expected = 0.9 if method == "magnitude" else 0.0
        assert results["sparsity"] == pytest.approx(expected, abs=1e-3)


def test_top5_accuracy_counts_a_hit_within_the_five_highest_logits() -> None:
    """Ten classes, three hand-made rows: the true class ranked 1st, 4th and 7th."""
    from sparse_lightning.modules import ClassificationModule

    module = ClassificationModule(nn.Identity(), lambda p: None, num_classes=10, top5=True)
    logits = torch.tensor([list(range(10, 0, -1))] * 3, dtype=torch.float32)  # class 0 highest
    labels = torch.tensor([0, 3, 6])
    module.test_acc(logits, labels)
    module.test_acc5(logits, labels)
    assert module.test_acc.compute().item() == pytest.approx(1 / 3)
    assert module.test_acc5.compute().item() == pytest.approx(2 / 3)
