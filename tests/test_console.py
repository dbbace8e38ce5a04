"""What a run prints: no third-party noise, our own lines, and a progress bar in optimiser steps
out of trainer.max_steps that shows the method's sparsity without reading it every step."""

from __future__ import annotations

import logging
import math
import warnings

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ProgressBar

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.config import compose_config
from sparse_lightning.errors import ConfigError
from sparse_lightning.modules import ClassificationModule
from sparse_lightning.run import console
from sparse_lightning.run.console import StepProgressBar, progress_bar, quiet_third_party
from tests.conftest import run_cli
from tests.toy import loader, tiny_model

# What Lightning and torch print in a plain run unless quiet_third_party hides it.
NOISE = [
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
    "`isinstance(treespec, LeafSpec)` is deprecated",
    "`weights_only` was not set, defaulting to `False`.",
    "You are using `torch.load` with `weights_only=False`",
]


def test_a_run_prints_no_third_party_noise_but_our_own_lines_and_the_step_bar(tmp_path):
    result = run_cli(
        tmp_path,
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        "data.num_samples=1000",
        "data.val_size=100",
        "callbacks.checkpoint.every_n_train_steps=10",
    )
    output = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in output
    assert "magnitude prunes 5 weight tensors" in output  # our layer selection log
    assert "magnitude on cnn1d/mnist1d: " in output and "; 30 steps in " in output  # summary
    assert "30/30 steps" in output and "sparsity=0.9000" in output


@pytest.fixture
def restored_filters():
    """quiet_third_party changes process-wide state; each test here gets it back as it was."""
    loggers = [logging.getLogger(name) for name in console.NOISY_LOGS]
    saved = [list(logger.filters) for logger in loggers]
    with warnings.catch_warnings():
        yield
    for logger, filters in zip(loggers, saved):
        logger.filters[:] = filters


def shown_warnings(message: str, category: type[Warning]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", append=True)  # after, so below, every other filter
        warnings.warn(message, category, stacklevel=1)
    return [str(w.message) for w in caught]


def test_the_noisy_warnings_are_hidden_and_other_warnings_are_not(restored_filters):
    quiet_third_party()
    hidden = [
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`",
        "You are using `torch.load` with `weights_only=False` (the current default value)",
    ]
    for message in hidden:
        assert shown_warnings(message, FutureWarning) == []
    kept = "`isinstance(x, LeafSpec)` is deprecated"
    assert shown_warnings(kept, FutureWarning) == [kept]
    assert shown_warnings(hidden[0], UserWarning) == [hidden[0]]  # only the category it has


def test_the_noisy_log_lines_are_dropped_and_lightnings_other_lines_are_kept(
    restored_filters, caplog
):
    quiet_third_party()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    checkpoints = logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector")
    with caplog.at_level(logging.INFO):
        rank_zero.info(
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
            "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger."
        )
        rank_zero.info(
            "💡 Tip: For seamless cloud uploads and versioning, try installing "
            "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint."
        )
        checkpoints.info("`weights_only` was not set, defaulting to `False`.")
        rank_zero.info("GPU available: False, used: False")
        checkpoints.info("Restored all states from the checkpoint at last.ckpt")
    assert caplog.messages == [
        "GPU available: False, used: False",
        "Restored all states from the checkpoint at last.ckpt",
    ]


def test_quiet_third_party_is_idempotent(restored_filters):
    def filters() -> tuple[list, list[int]]:
        loggers = [logging.getLogger(name) for name in console.NOISY_LOGS]
        return list(warnings.filters), [len(logger.filters) for logger in loggers]

    quiet_third_party()
    once = filters()
    quiet_third_party()
    assert filters() == once


class CountingMethod(SparsityCallback):
    """A method whose sparsity read is counted; read k returns k / 100."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def current_sparsity(self) -> float:
        self.reads += 1
        return self.reads / 100


def fit_with_bar(
    bar: pl.Callback, max_steps: int, **trainer_args
) -> tuple[CountingMethod, pl.Trainer]:
    method = CountingMethod()
    module = ClassificationModule(
        tiny_model(), lambda p: torch.optim.SGD(p, lr=0.05), num_classes=4
    )
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=[method, bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        **trainer_args,
    )
    trainer.fit(module, loader(batch_size=32), loader(batch_size=32, shuffle=False))
    return method, trainer


class CountingBar(StepProgressBar):
    """Counts how often the bar gathers its postfix (Lightning's metrics: a host sync each)."""

    gathered = 0

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        self.gathered += 1
        return super().get_metrics(trainer, pl_module)


def test_the_training_bar_counts_optimiser_steps_of_max_steps_with_loss_and_sparsity(capsys):
    bar = CountingBar(sparsity_every_n_steps=5)
    # 8 batches an epoch, two per optimiser step, a validation every 8 batches: 20 steps span
    # 5 epochs and 5 validations, and the bar still counts steps
    method, trainer = fit_with_bar(
        bar,
        max_steps=20,
        accumulate_grad_batches=2,
        val_check_interval=8,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
    )
    train_bar = bar.train_progress_bar
    assert (train_bar.n, train_bar.total, train_bar.unit) == (20, 20, "steps")
    assert trainer.current_epoch == 5
    last = f"sparsity={method.reads / 100:.4f}"  # the last read, at the end of training
    assert "train/loss=" in train_bar.postfix and last in train_bar.postfix
    shown = capsys.readouterr().out
    assert "20/20 steps" in shown and last in shown
    # once per optimiser step (not per micro-batch), validation and epoch end, start and end
    assert bar.gathered <= 20 + 5 + 6 + 2


@pytest.mark.parametrize(("max_steps", "every"), [(20, 5), (23, 5), (20, 1)])
def test_the_sparsity_is_read_once_every_n_steps_not_every_step(max_steps, every):
    bar = StepProgressBar(sparsity_every_n_steps=every)
    method, _ = fit_with_bar(bar, max_steps=max_steps, limit_val_batches=0)
    assert 1 <= method.reads <= math.ceil(max_steps / every) + 2


def test_a_hidden_bar_never_reads_the_sparsity():
    method, _ = fit_with_bar(StepProgressBar(refresh_rate=0), max_steps=10, limit_val_batches=0)
    assert method.reads == 0


def test_a_run_without_a_sparsity_method_shows_steps_only():
    bar = StepProgressBar()
    module = ClassificationModule(
        tiny_model(), lambda p: torch.optim.SGD(p, lr=0.05), num_classes=4
    )
    trainer = pl.Trainer(
        max_steps=6,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
    )
    trainer.fit(module, loader(batch_size=32))
    assert bar.train_progress_bar.n == 6 and "sparsity" not in bar.train_progress_bar.postfix


def test_the_config_entry_gives_a_step_bar_and_steps_aside_for_enable_progress_bar_false():
    shown = instantiate(compose_config().callbacks.progress_bar)
    assert isinstance(shown, StepProgressBar) and shown.sparsity_every_n_steps == 50
    cfg = compose_config(["+trainer.enable_progress_bar=false"])
    hidden = instantiate(cfg.callbacks.progress_bar)
    assert not isinstance(hidden, ProgressBar)
    pl.Trainer(enable_progress_bar=False, callbacks=[hidden], logger=False)  # Lightning accepts it


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sparsity_every_n_steps": 0}, "sparsity_every_n_steps=0 is not allowed; it must be >= 1"),
        ({"refresh_rate": -1}, "refresh_rate=-1 is not allowed; it must be >= 0"),
        ({"refresh_rate": 2.5}, "refresh_rate=2.5 is not allowed; it must be >= 0"),
    ],
)
def test_a_bad_bar_setting_is_one_clear_error(settings, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        progress_bar(**settings)
