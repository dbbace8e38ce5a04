"""What a run prints to the console: third-party noise hidden, a progress bar in optimiser steps
that also shows the method's current sparsity."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.errors import ConfigError

# Lightning's adverts for its cloud products, logged by every Trainer.
LIGHTNING_TIPS = (
    r"💡 Tip: For seamless cloud logging and experiment tracking, try installing \[litlogger\]",
    r"💡 Tip: For seamless cloud uploads and versioning, try installing \[litmodels\]",
)

# Log records, by the logger that emits them (a logger's filters see only its own records).
NOISY_LOGS: dict[str, tuple[str, ...]] = {
    "pytorch_lightning.utilities.rank_zero": LIGHTNING_TIPS,
    "lightning_fabric.utilities.rank_zero": LIGHTNING_TIPS,  # the same helper, if Fabric's
    # logged on every checkpoint Lightning saves with its optimiser and callback states
    "pytorch_lightning.trainer.connectors.checkpoint_connector": (
        r"`weights_only` was not set, defaulting to `False`\.$",
    ),
}

# Warnings (message regex, matched at the start, and category).
NOISY_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch deprecated a class that Lightning's own pytree helper still uses
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # torch 2.4-2.5 on every torch.load without weights_only (Lightning's checkpoint loads)
    (r"You are using `torch\.load` with `weights_only=False`", FutureWarning),
)


class _DropMessages(logging.Filter):
    """Drops the records whose message matches one of ``patterns``."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.search(record.getMessage()) is None


_log_filters = {name: _DropMessages(patterns) for name, patterns in NOISY_LOGS.items()}


def quiet_third_party() -> None:
    """Hide the third-party console lines that tell a user nothing about their run (idempotent).

    Hidden, and nothing else (every other warning and log line still shows):

    - Lightning's "💡 Tip: For seamless cloud logging and experiment tracking, try installing
      [litlogger](...)" and "💡 Tip: For seamless cloud uploads and versioning, try installing
      [litmodels](...)" (INFO log lines of every Trainer);
    - Lightning's "`weights_only` was not set, defaulting to `False`." (INFO, every checkpoint);
    - torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated, use ..." raised by
      Lightning's pytree helper in every fit and test;
    - torch 2.4-2.5's FutureWarning "You are using `torch.load` with `weights_only=False` ...".
    """
    for name, log_filter in _log_filters.items():
        logging.getLogger(name).addFilter(log_filter)  # a filter already there is not re-added
    for message, category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)  # replaces a twin


def method_of(trainer: pl.Trainer) -> SparsityCallback | None:
    """The run's sparsity method: the first SparsityCallback among the trainer's callbacks."""
    return next((c for c in trainer.callbacks if isinstance(c, SparsityCallback)), None)


class StepProgressBar(TQDMProgressBar):
    """Training progress in optimiser steps out of ``trainer.max_steps``, across epochs, with
    Lightning's progress-bar metrics (the loss) and the method's current sparsity.

    The sparsity costs a host sync, so it is read every ``sparsity_every_n_steps`` steps (and at
    the start and end of training) and shown from a cache in between. ``refresh_rate`` counts
    optimiser steps for the training bar and batches for validation and test, as in Lightning.
    """

    BAR_FORMAT = (
        "{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} "
        "[{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
    )

    def __init__(
        self, refresh_rate: int = 1, sparsity_every_n_steps: int = 50, process_position: int = 0
    ) -> None:
        for name, value, least in (
            ("refresh_rate", refresh_rate, 0),  # 0 hides the bar, as in Lightning
            ("sparsity_every_n_steps", sparsity_every_n_steps, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(
                    f"progress bar {name}={value!r} is not allowed; it must be >= {least}"
                )
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.sparsity_every_n_steps = sparsity_every_n_steps
        self._method: SparsityCallback | None = None
        self._sparsity: float | None = None
        self._sparsity_step: int | None = None
        self._last_step: int | None = None

    @property
    def total_steps(self) -> int | None:
        """The optimiser steps the run ends at; None when only epochs bound it."""
        if self.trainer.max_steps is not None and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return convert_inf(self.trainer.estimated_stepping_batches)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._method = method_of(trainer)
        self._sparsity = self._sparsity_step = None
        self._last_step = trainer.global_step
        self._read_sparsity(trainer.global_step)
        self.train_progress_bar = Tqdm(
            desc="Training",
            unit="steps",
            initial=trainer.global_step,  # a resumed run starts where it stopped
            total=self.total_steps,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )
        if self.is_enabled:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """One bar for the whole run: an epoch boundary does not reset it."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_: Any
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # a micro-batch that is accumulated, not stepped
            return
        self._last_step = step
        if step % self.sparsity_every_n_steps == 0:
            self._read_sparsity(step)
        bar = self.train_progress_bar
        if self.is_enabled and (step % self.refresh_rate == 0 or step == bar.total):
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.update(step - bar.n)  # redraws at most every tqdm `mininterval` (a log file)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self.train_progress_bar
        if self.is_enabled:
            self._read_sparsity(trainer.global_step)
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
        super().on_train_end(trainer, pl_module)

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """Lightning's progress-bar metrics less the logger version, plus the cached sparsity."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the run folder names the run
        if self._sparsity is not None:
            items["sparsity"] = f"{self._sparsity:.4f}"
        return items

    def _read_sparsity(self, step: int) -> None:
        """Read the method's sparsity (one host sync), once per step at most."""
        if self._method is None or self.is_disabled or step == self._sparsity_step:
            return
        self._sparsity = float(self._method.current_sparsity())
        self._sparsity_step = step


def progress_bar(enabled: bool = True, **settings: Any) -> Callback:
    """The `callbacks.progress_bar` entry: a StepProgressBar, or, where the trainer has
    ``enable_progress_bar=false`` (which Lightning refuses beside a progress-bar callback), a
    callback that does nothing."""
    return StepProgressBar(**settings) if enabled else Callback()
