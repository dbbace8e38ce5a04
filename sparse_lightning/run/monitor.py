"""Sparsity over training for any logger, and the end-of-run tables, charts and summary for W&B.

Logs what the method's ``progress(step)`` gives (``SparsityCallback``): ``sparsity/target``
(the schedule's s_t, or the fixed target), ``sparsity/global`` (the masks' pruned fraction, for
VD / l0 the fraction their evaluation rule prunes) and what a method adds (VD / l0: the ramped
regulariser weight ``sparsity/reg_weight``), on the steps where the method ``changes_at`` and
every ``every_n_steps`` optimiser steps only: each point costs one host sync, never one per step.
At the end of training it logs ``sparsity/layer/<name>`` to every logger and, for a
``WandbLogger``, a per-layer table and bar chart; `publish_results` puts a finished run's
``results.json`` into the W&B run summary and closes the run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.errors import ConfigError

log = logging.getLogger(__name__)


class SparsityMonitor(pl.Callback):
    """Logs scheduled and achieved sparsity of the run's sparsity method (the first
    `SparsityCallback` among the trainer's callbacks)."""

    def __init__(self, every_n_steps: int = 50, per_layer: bool = True) -> None:
        if int(every_n_steps) <= 0:
            raise ConfigError(f"every_n_steps={every_n_steps} must be a positive number of steps")
        self.every_n_steps = int(every_n_steps)
        self.per_layer = per_layer
        self._last_logged = -1
        self._method: SparsityCallback | None = None

    @staticmethod
    def find_method(trainer: pl.Trainer) -> SparsityCallback | None:
        return next((c for c in trainer.callbacks if isinstance(c, SparsityCallback)), None)

    def _due(self, method: SparsityCallback, step: int) -> bool:
        return step != self._last_logged and (
            method.changes_at(step) or step % self.every_n_steps == 0
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._method = self.find_method(trainer)
        self._last_logged = -1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if not trainer.loggers or not trainer.is_global_zero:
            return
        method = self._method
        step = trainer.global_step
        if method is None or method.mask_set is None or not self._due(method, step):
            return
        self._last_logged = step
        metrics = method.progress(step)  # the one host sync of this step
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        method = self.find_method(trainer)
        if not trainer.loggers or not trainer.is_global_zero or method is None:
            return
        if method.mask_set is None:
            return
        step = trainer.global_step
        layers = method.mask_set.layer_sparsity()
        metrics = {
            "sparsity/target": method.scheduled_sparsity(step),
            "sparsity/global": method.mask_set.sparsity(),
        }
        if self.per_layer:
            metrics.update({f"sparsity/layer/{name}": value for name, value in layers.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, WandbLogger):
                log_layer_chart(logger, layers, method.layer_targets, step)


def log_layer_chart(
    logger: WandbLogger, layers: Mapping[str, float], targets: Mapping[str, float], step: int
) -> None:
    """A W&B table (layer, target, achieved sparsity) and a bar chart of it."""
    import wandb

    rows = [[name, float(targets.get(name, 0.0)), float(value)] for name, value in layers.items()]
    table = wandb.Table(columns=["layer", "target", "sparsity"], data=rows)
    chart = wandb.plot.bar(table, "layer", "sparsity", title="Sparsity per layer")
    logger.experiment.log(
        {"sparsity/layers": table, "sparsity/layers_chart": chart, "trainer/global_step": step}
    )


@rank_zero_only
def publish_results(loggers: Logger | list[Logger] | None, results: Mapping[str, Any]) -> None:
    """Put a finished run's results (the content of results.json) into the W&B run summary,
    then finish the W&B run, so the next run of a sweep in this process starts its own."""
    if not loggers:
        return
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update(dict(results))
            run.finish()
