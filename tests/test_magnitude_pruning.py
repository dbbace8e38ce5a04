"""Gradual magnitude pruning inside a real Lightning Trainer, checked from the outside."""

from __future__ import annotations

import copy
import functools
import pickle

import pytest
import pytorch_lightning as pl
import torch

from sparse_lightning.budgets import UniformBudget
from sparse_lightning.callbacks import MagnitudePruning
from sparse_lightning.modules import ClassificationModule
from sparse_lightning.schedules import PolynomialSchedule
from sparse_lightning.selection import LayerSelection
from tests.toy import loader, tiny_model

STEPS = 30


OPTIMIZERS = {
    "sgd_nesterov_wd": functools.partial(
        torch.optim.SGD, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "adam": functools.partial(torch.optim.Adam, lr=1e-2),
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1),
}


class ZeroWatch(pl.Callback):
    """Records, independently of the method, whether pruned weights are zero in every forward
    pass and after every optimiser step, and each step's masks."""

    def __init__(self, method: MagnitudePruning):
        self.method = method
        self.violations: list[str] = []
        self.history: list[dict[str, torch.Tensor]] = []
        self.handles = []

    def on_train_start(self, trainer, pl_module):
        for entry in self.method.mask_set.entries:
            hook = self._check(entry, "forward")
            self.handles.append(entry.module.register_forward_pre_hook(hook))

    def on_train_end(self, trainer, pl_module):
        for handle in self.handles:
            handle.remove()

    def _check(self, entry, where):
        def hook(*_):
            if (entry.weight[~entry.mask] != 0).any():
                self.violations.append(f"{entry.name} at {where}")

        return hook

    def on_train_batch_end(self, trainer, pl_module, *args):
        for entry in self.method.mask_set.entries:
            self._check(entry, f"step {trainer.global_step}")()
        self.history.append(self.method.mask_set.masks())


def fit(optimizer="sgd_nesterov_wd", steps=STEPS, target_sparsity=0.8, **parts):
    pl.seed_everything(0)
    schedule = PolynomialSchedule(target_sparsity, begin_step=5, end_step=20, frequency=5)
    method = MagnitudePruning(schedule, **parts)
    watch = ZeroWatch(method)
    module = ClassificationModule(tiny_model(), OPTIMIZERS[optimizer], num_classes=4)
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[method, watch],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader())
    return module, method, watch, trainer


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_pruned_weights_are_zero_in_every_forward_and_after_every_step(optimizer):
    module, method, watch, _ = fit(optimizer)
    assert watch.violations == []
    assert method.mask_set.sparsity() == pytest.approx(0.8, abs=0.01)


def test_masks_change_only_on_schedule_steps_only_shrink_and_follow_the_formula():
    _, method, watch, _ = fit()
    schedule = PolynomialSchedule(0.8, begin_step=5, end_step=20, frequency=5)
    previous = {n: torch.ones_like(m) for n, m in watch.history[0].items()}
    for step, masks in enumerate(watch.history, start=1):
        changed = any(not torch.equal(masks[n], previous[n]) for n in masks)
        if changed:
            assert schedule.is_update_step(step), f"masks changed after step {step}"
        for name, mask in masks.items():
            assert bool((mask <= previous[name]).all()), f"{name} revived after step {step}"
            if step >= 5:  # the expected sparsity at the last update step <= step
                last = max(t for t in range(5, step + 1) if schedule.is_update_step(t))
                pruned = mask.numel() - int(mask.sum())
                assert abs(pruned - schedule.sparsity_at(last) * mask.numel()) <= 0.5 + 1e-9
        previous = masks


def test_final_per_layer_sparsity_equals_the_target_within_one_element():
    _, method, _, _ = fit(target_sparsity=0.9)
    for entry in method.mask_set.entries:
        pruned = entry.mask.numel() - int(entry.mask.sum())
        assert abs(pruned - 0.9 * entry.mask.numel()) <= 0.5 + 1e-9


def test_global_scope_reaches_the_target_over_all_weights_and_not_per_layer():
    _, method, _, _ = fit(target_sparsity=0.9, scope="global")
    total = sum(e.mask.numel() for e in method.mask_set.entries)
    kept = sum(int(e.mask.sum()) for e in method.mask_set.entries)
    assert abs((total - kept) - 0.9 * total) <= 0.5 + 1e-9
    assert len(set(round(v, 3) for v in method.mask_set.layer_sparsity().values())) > 1


def test_first_layer_dense_and_per_layer_override():
    _, method, _, _ = fit(
        selection=LayerSelection(first_layer_dense=True),
        budget=UniformBudget({"6.weight": 0.5}),
    )
    sparsity = method.mask_set.layer_sparsity()
    assert "0.weight" not in sparsity
    assert sparsity["4.weight"] == pytest.approx(0.8, abs=1e-2)
    assert sparsity["6.weight"] == pytest.approx(0.5, abs=1e-2)


def test_checkpoint_reloads_into_a_fresh_module_with_identical_masks_and_weights(tmp_path):
    module, _, _, trainer = fit()
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    fresh = ClassificationModule(tiny_model(), OPTIMIZERS["adam"], num_classes=4)
    checkpoint = torch.load(path, weights_only=False)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    for (name, a), b in zip(module.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(k.endswith("weight_mask") for k in checkpoint["state_dict"])
    assert checkpoint["callbacks"]  # the schedule position travels with the checkpoint


def test_module_and_callback_deepcopy_and_pickle():
    module, method, _, _ = fit()
    for clone in (copy.deepcopy(module.model), pickle.loads(pickle.dumps(module.model))):
        assert torch.equal(clone[0].weight_mask, module.model[0].weight_mask)
    clone = pickle.loads(pickle.dumps(method))
    assert clone.schedule == method.schedule
