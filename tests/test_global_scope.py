"""`scope=global` magnitude pruning, driven through a real Lightning Trainer: the pooled sparsity
follows the cubic schedule at every update, weights are ranked by |w| across layers (hand-counted
toy layers), and a layer with a `layer_sparsity` override keeps its own target while the others
are pooled to the global one."""

from __future__ import annotations

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lightning.budgets import UniformBudget
from sparse_lightning.callbacks import MagnitudePruning, RandomPruning
from sparse_lightning.callbacks.magnitude import GradualPruning
from sparse_lightning.modules import ClassificationModule
from sparse_lightning.schedules import PolynomialSchedule

# Three hand-made 4x4 kernels with distinct magnitudes and mixed signs (a signed ranking would
# prune the large negative entries first). |TINY| = 0.001 .. 0.016, |SMALL| = 0.01 .. 0.16,
# |LARGE| = 0.145 .. 1.645 in steps of 0.1: only SMALL's 0.15 and 0.16 exceed LARGE's 0.145.
TINY = [
    [0.004, -0.011, 0.016, -0.001],
    [-0.009, 0.002, -0.014, 0.007],
    [0.012, -0.005, 0.010, -0.015],
    [-0.003, 0.013, -0.006, 0.008],
]
LARGE = [
    [0.545, -1.645, 0.145, -0.345],
    [-0.945, 0.245, -1.245, 1.045],
    [1.545, -0.445, 0.745, -0.645],
    [-1.145, 0.845, -1.445, 1.345],
]
SMALL = [
    [-0.03, 0.16, -0.09, 0.01],
    [0.12, -0.05, 0.15, -0.14],
    [-0.07, 0.02, -0.11, 0.06],
    [0.13, -0.10, 0.04, -0.08],
]


class MaskRecorder(pl.Callback):
    """After every optimiser step (placed after the method, so it sees that step's masks): a copy
    of every `*_mask` buffer, read straight from the modules."""

    def __init__(self) -> None:
        self.masks: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *_) -> None:
        self.masks[trainer.global_step] = {
            name.removeprefix("model."): buffer.clone()
            for name, buffer in pl_module.named_buffers()
            if name.endswith("_mask")
        }


def kernels(*values: list[list[float]]) -> nn.Sequential:
    """Bias-free 4x4 Linear layers holding ``values`` (``0.weight``, ``1.weight``, ...)."""
    model = nn.Sequential(*(nn.Linear(4, 4, bias=False) for _ in values))
    with torch.no_grad():
        for layer, weight in zip(model, values):
            layer.weight.copy_(torch.tensor(weight))
    return model


def train(
    model: nn.Module, method: GradualPruning, steps: int, lr: float = 0.0
) -> dict[int, dict[str, torch.Tensor]]:
    """``steps`` SGD steps of a real Trainer; lr=0 keeps the hand-made weights as they are.
    Returns the masks after each step."""
    recorder = MaskRecorder()
    data = TensorDataset(torch.randn(64, 4, generator=torch.Generator().manual_seed(0)),
                         torch.arange(64) % 4)  # fmt: skip
    trainer = pl.Trainer(
        max_steps=steps, callbacks=[method, recorder], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    module = ClassificationModule(model, partial(torch.optim.SGD, lr=lr), num_classes=4)
    trainer.fit(module, DataLoader(data, batch_size=4))
    return recorder.masks


def mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def pruned(masks: dict[str, torch.Tensor], *names: str) -> int:
    return sum(int((~masks[n]).sum()) for n in names)


def test_pooled_sparsity_follows_the_cubic_schedule_at_every_update_step() -> None:
    """s_t = s_f + (s_0 - s_f)(1 - (t - t0)/(t_end - t0))^3 over all weights together, set at
    t0, every `frequency` steps after it and at t_end (not a multiple of 4 steps after t0),
    unchanged in between; with training on, so the ranking moves between updates."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                          nn.Linear(16, 4))  # fmt: skip
    schedule = PolynomialSchedule(0.8, begin_step=2, end_step=12, frequency=4, initial_sparsity=0.1)
    method = MagnitudePruning(schedule, scope="global")
    masks = train(model, method, steps=14, lr=0.1)
    names = ["0.weight_mask", "2.weight_mask", "4.weight_mask"]
    total = 4 * 32 + 32 * 16 + 16 * 4

    def cubic(t: int) -> float:
        return 0.8 + (0.1 - 0.8) * (1 - (t - 2) / (12 - 2)) ** 3

    updates = {2: cubic(2), 6: cubic(6), 10: cubic(10), 12: 0.8}
    assert cubic(2) == pytest.approx(0.1) and cubic(12) == pytest.approx(0.8)
    expected = 0.0
    for step in range(1, 15):
        expected = updates.get(step, expected)
        count = pruned(masks[step], *names)
        assert abs(count - expected * total) <= 0.5, f"step {step}: {count} of {total} pruned"
    # pooled, not per layer: the layers end at clearly different sparsities
    final = [pruned(masks[14], n) / masks[14][n].numel() for n in names]
    assert max(final) - min(final) > 0.1, final


def test_global_ranking_is_by_magnitude_across_layers_hand_counted() -> None:
    """32 weights, schedule 0 -> 0.5 over two steps. Step 1: s = 0.5 - 0.5 (1/2)^3 = 0.4375,
    14 pruned: SMALL's 14 entries up to 0.14. Step 2: 16 pruned: also LARGE's 0.145 and SMALL's
    0.15. SMALL ends 15/16 sparse, LARGE 1/16 (per-layer scope would give 8/16 each)."""
    method = MagnitudePruning(PolynomialSchedule(0.5, 0, 2, 1), scope="global")
    masks = train(kernels(LARGE, SMALL), method, steps=2)
    large_kept = mask([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    small_kept = mask([[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # 0.16, 0.15
    assert torch.equal(masks[1]["0.weight_mask"], large_kept)
    assert torch.equal(masks[1]["1.weight_mask"], small_kept)
    large_kept = mask([[1, 1, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])  # 0.145 goes
    small_kept = mask([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # 0.16 stays
    assert torch.equal(masks[2]["0.weight_mask"], large_kept)
    assert torch.equal(masks[2]["1.weight_mask"], small_kept)


def test_a_pruned_weight_is_never_revived_by_the_global_ranking() -> None:
    """Random scores (unlike |w|, which is 0 once pruned) would rank some pruned entries above
    live ones: every mask must still only shrink, while the pooled count follows the schedule."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 4))
    method = RandomPruning(PolynomialSchedule(0.9, 1, 7, 2), seed=0, scope="global")
    masks = train(model, method, steps=8, lr=0.1)
    total = 4 * 32 + 32 * 4
    for step in range(2, 9):
        for name, kept in masks[step].items():
            assert not bool((kept & ~masks[step - 1][name]).any()), f"{name} revived at {step}"
    s_3 = 0.9 * (1 - (1 - (3 - 1) / (7 - 1)) ** 3)
    assert abs(pruned(masks[3], *masks[3]) - s_3 * total) <= 0.5
    assert pruned(masks[8], *masks[8]) == round(0.9 * total)


# TINY's 4 smallest |w| (0.001 .. 0.004), and its 8 smallest (0.001 .. 0.008), pruned.
TINY_AT_25 = mask([[0, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
TINY_AT_50 = mask([[0, 1, 1, 0], [1, 0, 1, 0], [1, 0, 1, 1], [0, 1, 0, 0]])


@pytest.mark.parametrize(
    ("override", "tiny_kept"),
    [(0.25, TINY_AT_25), (0.5, TINY_AT_50)],
    ids=["override_below_the_global_target", "override_equal_to_the_global_target"],
)
def test_an_overridden_layer_reaches_its_own_target_and_the_rest_are_pooled(
    override: float, tiny_kept: torch.Tensor
) -> None:
    """Global target 0.5, `layer_sparsity={"0.weight": override}`: TINY (all smaller than any
    other weight, so pooling would prune all of it) loses exactly its own smallest entries;
    LARGE and SMALL are ranked together at 0.5 as in the hand count above. An override equal to
    the global target is still the layer's own target, not a licence to pool it."""
    method = MagnitudePruning(
        PolynomialSchedule(0.5, 0, 1, 1),
        budget=UniformBudget({"0.weight": override}),
        scope="global",
    )
    masks = train(kernels(TINY, LARGE, SMALL), method, steps=1)[1]
    assert torch.equal(masks["0.weight_mask"], tiny_kept)
    assert torch.equal(
        masks["1.weight_mask"], mask([[1, 1, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    )
    assert torch.equal(
        masks["2.weight_mask"], mask([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    )


def test_an_override_is_reached_when_the_global_target_is_zero() -> None:
    """`sparsity.target=0` with one overridden layer prunes that layer alone, to its target."""
    method = MagnitudePruning(
        PolynomialSchedule(0.0, 0, 1, 1), budget=UniformBudget({"0.weight": 0.25}), scope="global"
    )
    masks = train(kernels(TINY, LARGE), method, steps=1)[1]
    assert torch.equal(masks["0.weight_mask"], TINY_AT_25)
    assert bool(masks["1.weight_mask"].all())
