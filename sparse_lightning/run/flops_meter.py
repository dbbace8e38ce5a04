"""The FLOPs of one training run for results.json, counted off the hot path.

The forward pass is counted once, on the first training batch (``flops.ForwardCounter``,
entered at ``on_train_batch_start`` and left at ``on_before_backward``, so the backward pass is
not in it), per example. Over training only the masks' densities matter, and they change only
on the steps where the method ``changes_at`` (``callbacks/base.py``, as ``run/monitor.py``
reads it): the meter keeps [(step, densities)] and reads the densities (one host sync) at the
next batch start after such a step, whatever order callbacks run in; every other step costs one
``changes_at`` call. The sum is ``flops.training_flops`` at the end. The record (``record``) is
``run/results.py: FlopsRecord``; the meter's state travels in the checkpoint, so a resumed run
counts the whole run.

Which steps need the dense gradient, and which methods train dense, is decided here from the
method's parts: RigL's gradient growth (``GradientGrowth``) reads the dense gradient on its
update steps; VD and l0 (``RegularisedSparsity``) train reparameterised dense layers throughout,
so their training is counted dense even after their masks settle (their inference is sparse).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.callbacks.sparse_training import GradientGrowth
from sparse_lightning.callbacks.variational_dropout import RegularisedSparsity
from sparse_lightning.flops import (
    ForwardCounter,
    ForwardFlops,
    batch_examples,
    training_flops,
)
from sparse_lightning.run.monitor import SparsityMonitor
from sparse_lightning.run.results import FlopsRecord


def uses_dense_gradient(method: SparsityCallback) -> bool:
    """Whether the method's mask updates read the dense gradient (RigL's growth)."""
    return isinstance(getattr(method, "grow", None), GradientGrowth)


def trains_dense(method: SparsityCallback) -> bool:
    """VD and l0: every training step runs the dense reparameterised layers."""
    return isinstance(method, RegularisedSparsity)


def densities(method: SparsityCallback) -> dict[str, float]:
    """Kept fraction of each masked weight now (one host sync)."""
    assert method.mask_set is not None
    return {name: 1.0 - s for name, s in method.mask_set.layer_sparsity().items()}


def training_densities(method: SparsityCallback) -> dict[str, float]:
    """The densities a training step runs with: the masks', or {} (dense) for VD and l0."""
    return {} if trains_dense(method) else densities(method)


class FlopsMeter(pl.Callback):
    """Counts the run's FLOPs for results.json (module docstring); ``record`` at the end."""

    def __init__(self) -> None:
        self.forward: ForwardFlops | None = None
        self.examples_per_step = 0
        self.history: list[tuple[int, dict[str, float]]] = []
        self.dense_gradient_steps: list[int] = []
        self._method: SparsityCallback | None = None
        self._counter: ForwardCounter | None = None
        self._batch_examples = 0
        self._pending: int | None = None  # a step after which the masks changed, not yet read
        self._last_seen = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._method = SparsityMonitor.find_method(trainer)
        method = self._method
        if method is not None and method.mask_set is not None and not self.history:
            self.history = [(trainer.global_step, training_densities(method))]
        self._last_seen = trainer.global_step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        method = self._method
        if method is None or method.mask_set is None:
            return
        if self._pending is not None:
            self.history.append((self._pending, training_densities(method)))
            self._pending = None
        if self.forward is None and self._counter is None:
            weights = {e.name: e.weight for e in method.mask_set.entries}
            self._batch_examples = batch_examples(batch)
            self.examples_per_step = (
                self._batch_examples * trainer.accumulate_grad_batches * trainer.world_size
            )
            self._counter = ForwardCounter(pl_module, weights).start()

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        self._stop_counting()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        self._stop_counting()  # a step without backward (none in automatic optimisation)
        step = trainer.global_step
        method = self._method
        if method is None or step == self._last_seen:
            return
        self._last_seen = step
        if method.changes_at(step):
            if uses_dense_gradient(method):
                self.dense_gradient_steps.append(step)
            if not trains_dense(method):
                self._pending = step

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._counter is not None:
            self._counter.stop()
            self._counter = None

    def _stop_counting(self) -> None:
        if self._counter is not None:
            self._counter.stop()
            self.forward = self._counter.result(self._batch_examples)
            self._counter = None

    def record(self, method: SparsityCallback, steps: int) -> FlopsRecord:
        """The run's FLOPs after ``steps`` optimiser steps, the final masks for inference (one
        host sync); empty if no training batch was counted."""
        if self.forward is None or not self.history or method.mask_set is None:
            return FlopsRecord()
        history = list(self.history)
        if self._pending is not None:
            history.append((self._pending, training_densities(method)))
        dense, sparse = training_flops(self.forward, history, steps, self.dense_gradient_steps)
        final = densities(method)
        return FlopsRecord(
            inference={"dense": self.forward.dense(), "sparse": self.forward.sparse(final)},
            training={
                "dense": dense * self.examples_per_step,
                "sparse": sparse * self.examples_per_step,
            },
            examples_per_step=self.examples_per_step,
            steps=max(0, steps - history[0][0]),
            dense_gradient_steps=sum(history[0][0] < t <= steps for t in self.dense_gradient_steps),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "forward": None if self.forward is None else self.forward.to_json(),
            "examples_per_step": self.examples_per_step,
            "history": [[s, dict(d)] for s, d in self.history],
            "dense_gradient_steps": list(self.dense_gradient_steps),
            "pending": self._pending,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        forward = state_dict.get("forward")
        self.forward = None if forward is None else ForwardFlops.from_json(forward)
        self.examples_per_step = int(state_dict.get("examples_per_step", 0))
        self.history = [(int(s), dict(d)) for s, d in state_dict.get("history", [])]
        self.dense_gradient_steps = [int(t) for t in state_dict.get("dense_gradient_steps", [])]
        pending = state_dict.get("pending")
        self._pending = None if pending is None else int(pending)
