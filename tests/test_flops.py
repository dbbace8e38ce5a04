"""FLOPs in results.json (flops.py, run/flops_meter.py) and their plot (report.py), hand-counted.

The convention is RigL's (Evci et al. 2020): a matmul of (m x k) by (k x n) costs 2 m k n FLOPs,
scaled by the density of the masked weight it multiplies; a training step costs 3 forward passes
(forward + twice for the backward), RigL's update steps 2 sparse + 1 dense. Every expected number
below is typed as arithmetic from the layer shapes, never computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lightning import report
from sparse_lightning.callbacks.base import DenseBaseline, SparsityCallback
from sparse_lightning.callbacks.magnitude import MagnitudePruning
from sparse_lightning.callbacks.sparse_training import (
    GradientGrowth,
    RandomGrowth,
    SparseTraining,
)
from sparse_lightning.flops import ForwardFlops, count_forward, training_flops
from sparse_lightning.layers import VD_CLASSES, reparameterise
from sparse_lightning.models.transformer import build_transformer
from sparse_lightning.modules import ClassificationModule
from sparse_lightning.run.flops_meter import FlopsMeter
from sparse_lightning.run.folder import read_results, write_results
from sparse_lightning.run.results import FlopsRecord, InitRecord, RunResults
from sparse_lightning.schedules import DropFractionSchedule, PolynomialSchedule
from sparse_lightning.selection import select_prunable
from tests.conftest import TINY, run_cli
from tests.test_report import write_run

BATCH = 5  # examples per step in the Trainer runs below
F_D = 2 * 4 * 3 + 2 * 3 * 2  # Linear(4, 3) then Linear(3, 2), per example


def two_layer() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def weights_of(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name] for name in names}


# -- one forward pass ---------------------------------------------------------------------------
def test_a_forward_pass_costs_two_flops_per_multiply_add_of_each_layer() -> None:
    model = two_layer()
    forward = count_forward(
        model, weights_of(model, ["0.weight", "2.weight"]), lambda: model(torch.randn(7, 4)), 7
    )
    assert forward.weights == {"0.weight": 2 * 4 * 3, "2.weight": 2 * 3 * 2}  # per example
    assert forward.other == 0
    assert forward.dense() == 2 * 4 * 3 + 2 * 3 * 2
    densities = {"0.weight": 6 / 12, "2.weight": 2 / 6}
    assert forward.sparse(densities) == pytest.approx(2 * 4 * 3 * 6 / 12 + 2 * 3 * 2 * 2 / 6)


def test_a_layer_without_a_mask_stays_dense_in_the_sparse_count() -> None:
    model = two_layer()
    forward = count_forward(
        model, weights_of(model, ["0.weight"]), lambda: model(torch.randn(3, 4)), 3
    )
    assert forward.weights == {"0.weight": 2 * 4 * 3}
    assert forward.other == 2 * 3 * 2
    assert forward.sparse({"0.weight": 0.25}) == pytest.approx(2 * 4 * 3 * 0.25 + 2 * 3 * 2)


class TiedLanguageModel(nn.Module):
    """Lookup, then the output projection by the same (vocab x dim) tensor."""

    def __init__(self, vocab: int = 10, dim: int = 4, functional: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight
        self.functional = functional

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        if self.functional:  # the weight used directly, by no module of its own
            return F.linear(hidden, self.embed.weight)
        return self.out(hidden)


@pytest.mark.parametrize("functional", [False, True])
def test_a_tied_weight_costs_its_projection_scaled_by_its_density_and_its_lookups_nothing(
    functional: bool,
) -> None:
    model = TiedLanguageModel(functional=functional)
    ids = torch.randint(0, 10, (2, 3))  # 2 examples of 3 tokens
    forward = count_forward(model, weights_of(model, ["embed.weight"]), lambda: model(ids), 2)
    assert forward.weights == {"embed.weight": 2 * 3 * 4 * 10}
    assert forward.other == 0
    assert forward.sparse({"embed.weight": 0.3}) == pytest.approx(2 * 3 * 4 * 10 * 0.3)


def test_the_transformers_shared_embedding_costs_the_output_projection_only() -> None:
    model = build_transformer(
        64, d_model=32, ffn_dim=64, encoder_layers=1, decoder_layers=1, heads=2, max_positions=64
    )
    ids = torch.randint(3, 64, (4, 7))  # 4 sentence pairs, 7 tokens on each side

    def forward() -> None:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)

    counted = count_forward(model, weights_of(model, select_prunable(model)), forward, 4)
    assert counted.weights["model.shared.weight"] == 2 * 7 * 32 * 64  # lm_head; lookups free
    assert counted.weights["model.encoder.layers.0.self_attn.q_proj.weight"] == 2 * 7 * 32 * 32
    assert counted.weights["model.decoder.layers.0.fc1.weight"] == 2 * 7 * 32 * 64
    # attention: scores (7 x 16) @ (16 x 7) and values (7 x 7) @ (7 x 16) per head, for the
    # encoder's and decoder's self-attention and the decoder's cross-attention
    assert counted.other == 3 * 2 * (2 * 7 * 16 * 7 + 2 * 7 * 7 * 16)


def test_variational_dropout_layers_count_as_the_plain_layers() -> None:
    model = two_layer()
    ids = ["0.weight", "2.weight"]
    x = torch.randn(6, 4)
    plain = count_forward(model, weights_of(model, ids), lambda: model(x), 6)
    for name in ids:
        reparameterise(model, name, VD_CLASSES, log_sigma2_init=-10.0, threshold=3.0)
    model.train()  # the training forward: mean and variance matmuls, noise
    reparameterised = count_forward(model, weights_of(model, ids), lambda: model(x), 6)
    assert reparameterised == plain == ForwardFlops({"0.weight": 2 * 4 * 3, "2.weight": 2 * 3 * 2})


# -- a whole run, from the pure sum ---------------------------------------------------------------
FORWARD = ForwardFlops({"0.weight": 2 * 4 * 3, "2.weight": 2 * 3 * 2})


def test_training_sums_three_passes_per_step_at_each_steps_densities() -> None:
    half = {"0.weight": 0.5, "2.weight": 0.5}
    quarter = {"0.weight": 0.25, "2.weight": 0.5}
    dense, sparse = training_flops(FORWARD, [(0, {}), (2, half), (4, quarter)], steps=6)
    assert dense == 3 * 6 * (2 * 4 * 3 + 2 * 3 * 2)
    assert sparse == pytest.approx(
        3 * 2 * (2 * 4 * 3 + 2 * 3 * 2)
        + 3 * 2 * (2 * 4 * 3 * 0.5 + 2 * 3 * 2 * 0.5)
        + 3 * 2 * (2 * 4 * 3 * 0.25 + 2 * 3 * 2 * 0.5)
    )
    # resumed at step 3: only steps 4-6 are this process's; the update at 2 is history
    dense, sparse = training_flops(FORWARD, [(3, half), (4, quarter)], steps=6)
    assert dense == 3 * 3 * (2 * 4 * 3 + 2 * 3 * 2)
    assert sparse == pytest.approx(
        3 * (2 * 4 * 3 * 0.5 + 2 * 3 * 2 * 0.5) + 3 * 2 * (2 * 4 * 3 * 0.25 + 2 * 3 * 2 * 0.5)
    )


def test_a_dense_gradient_step_costs_two_sparse_passes_and_one_dense() -> None:
    half = {"0.weight": 0.5, "2.weight": 0.5}
    f_s = 2 * 4 * 3 * 0.5 + 2 * 3 * 2 * 0.5
    _, sparse = training_flops(FORWARD, [(0, half), (3, half)], steps=6, dense_gradient_steps=[3])
    assert sparse == pytest.approx(5 * 3 * f_s + (2 * f_s + F_D))
    _, none_counted = training_flops(FORWARD, [(0, half)], steps=2, dense_gradient_steps=[3])
    assert none_counted == pytest.approx(2 * 3 * f_s)  # step 3 was never taken


# -- a whole run, from a Trainer ------------------------------------------------------------------
def fit_two_layer(
    method: SparsityCallback, steps: int, ckpt_path: Path | None = None
) -> tuple[FlopsMeter, pl.Trainer]:
    """``two_layer`` trained ``steps`` steps on batches of BATCH examples, with a FlopsMeter."""
    meter = FlopsMeter()
    module = ClassificationModule(two_layer(), lambda p: torch.optim.SGD(p, lr=0.1), num_classes=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    data = DataLoader(TensorDataset(x, (x.sum(dim=1) > 0).long()), batch_size=BATCH)
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[method, meter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return meter, trainer


def masked_record(method: SparsityCallback, steps: int) -> FlopsRecord:
    meter, trainer = fit_two_layer(method, steps)
    return meter.record(method, trainer.global_step)


def test_dense_training_costs_three_dense_passes_per_example_and_step() -> None:
    record = masked_record(DenseBaseline(), 6)
    assert record.inference == {"dense": F_D, "sparse": F_D}
    assert record.training == {"dense": BATCH * 6 * 3 * F_D, "sparse": BATCH * 6 * 3 * F_D}
    assert (record.examples_per_step, record.steps, record.dense_gradient_steps) == (BATCH, 6, 0)


def test_static_sparse_training_costs_three_sparse_passes_per_step() -> None:
    record = masked_record(SparseTraining(0.5), 6)  # 6 of 12 and 3 of 6 weights kept
    f_s = 2 * 4 * 3 * 6 / 12 + 2 * 3 * 2 * 3 / 6
    assert record.inference == pytest.approx({"dense": F_D, "sparse": f_s})
    assert record.training == pytest.approx(
        {"dense": BATCH * 6 * 3 * F_D, "sparse": BATCH * 6 * 3 * f_s}
    )


def test_gradual_pruning_integrates_its_densities_over_the_schedule() -> None:
    # power 1 from 0 to 2/3 between steps 0 and 4, every 2 steps: after step 2 a third of each
    # layer is pruned (4 of 12, 2 of 6), after step 4 two thirds (8 of 12, 4 of 6)
    schedule = PolynomialSchedule(2 / 3, begin_step=0, end_step=4, frequency=2, power=1)
    record = masked_record(MagnitudePruning(schedule), 6)
    steps_1_2 = 2 * 3 * (2 * 4 * 3 + 2 * 3 * 2)
    steps_3_4 = 2 * 3 * (2 * 4 * 3 * 8 / 12 + 2 * 3 * 2 * 4 / 6)
    steps_5_6 = 2 * 3 * (2 * 4 * 3 * 4 / 12 + 2 * 3 * 2 * 2 / 6)
    assert record.training["sparse"] == pytest.approx(BATCH * (steps_1_2 + steps_3_4 + steps_5_6))
    assert record.training["dense"] == BATCH * 6 * 3 * F_D
    assert record.inference["sparse"] == pytest.approx(2 * 4 * 3 * 4 / 12 + 2 * 3 * 2 * 2 / 6)


def test_rigl_pays_the_dense_gradient_on_its_update_steps() -> None:
    # updates after steps 2, 4 and 6 (Delta T = 2); each tensor keeps half its weights
    schedule = DropFractionSchedule(begin_step=0, end_step=6, frequency=2)
    record = masked_record(SparseTraining(0.5, grow=GradientGrowth(), schedule=schedule), 6)
    f_s = 2 * 4 * 3 * 6 / 12 + 2 * 3 * 2 * 3 / 6
    per_step = (3 * f_s * (2 - 1) + 2 * f_s + F_D) / 2  # RigL's appendix, Delta T = 2
    assert record.training["sparse"] == pytest.approx(BATCH * 6 * per_step)
    assert record.dense_gradient_steps == 3


def test_set_updates_its_masks_without_the_dense_gradient() -> None:
    schedule = DropFractionSchedule(begin_step=0, end_step=6, frequency=2)
    record = masked_record(SparseTraining(0.5, grow=RandomGrowth(), schedule=schedule), 6)
    f_s = 2 * 4 * 3 * 6 / 12 + 2 * 3 * 2 * 3 / 6
    assert record.training["sparse"] == pytest.approx(BATCH * 6 * 3 * f_s)
    assert record.dense_gradient_steps == 0


def test_a_resumed_run_counts_the_whole_run(tmp_path: Path) -> None:
    def method() -> MagnitudePruning:
        schedule = PolynomialSchedule(2 / 3, begin_step=0, end_step=4, frequency=2, power=1)
        return MagnitudePruning(schedule)

    whole = masked_record(method(), 6)
    _, first = fit_two_layer(method(), 2)  # stops right after the update at step 2
    first.save_checkpoint(tmp_path / "step2.ckpt")
    resumed = method()
    meter, trainer = fit_two_layer(resumed, 6, ckpt_path=tmp_path / "step2.ckpt")
    assert meter.record(resumed, trainer.global_step) == whole


# -- results.json and the report ------------------------------------------------------------------
def test_an_older_results_json_without_flops_still_reads() -> None:
    results = RunResults(
        method="dense", model="cnn1d", data="mnist1d", init=InitRecord("standard"), seed=0,
        target_sparsity=0.0, sparsity=0.0, layer_sparsity={}, metrics={"test/acc": 0.5},
    )  # fmt: skip
    old = results.to_json()
    del old["flops"]
    assert RunResults.from_json(old).flops == FlopsRecord()
    assert RunResults.from_json(json.loads(json.dumps(results.to_json()))) == results


CNN1D = (
    2 * 40 * 32 * 1 * 5 + 2 * 20 * 64 * 32 * 5 + 2 * 10 * 64 * 64 * 5 + 2 * 640 * 256 + 2 * 256 * 10
)
# conf/model/cnn1d.yaml: three convs (kernel 5; lengths 40, 20, 10; channels 32, 64, 64), then
# Linear(640, 256) and Linear(256, 10)


@pytest.mark.parametrize("method", ["magnitude", "dense"])
def test_a_run_writes_consistent_flops_into_results_json(tmp_path: Path, method: str) -> None:
    run_cli(tmp_path, f"method={method}", *TINY, "trainer.max_steps=20")
    flops = json.loads((tmp_path / "results.json").read_text())["flops"]
    assert flops["steps"] == 20 and flops["examples_per_step"] > 0
    assert flops["inference"]["dense"] == CNN1D
    assert flops["training"]["dense"] == 3 * CNN1D * flops["examples_per_step"] * 20
    if method == "dense":
        assert flops["inference"]["sparse"] == flops["inference"]["dense"]
        assert flops["training"]["sparse"] == flops["training"]["dense"]
    else:  # every layer at 90 % by the end (uniform budget); dense for the first 10 %
        assert flops["inference"]["sparse"] == pytest.approx(0.1 * CNN1D)
        assert flops["inference"]["sparse"] < flops["training"]["sparse"] / (
            3 * flops["examples_per_step"] * 20
        )
        assert flops["training"]["sparse"] < flops["training"]["dense"]
    assert flops["dense_gradient_steps"] == 0


def with_flops(run: Path, training: float) -> None:
    results = read_results(run)
    results.flops = FlopsRecord({"dense": 10.0, "sparse": 1.0}, {"dense": 1e12, "sparse": training})
    write_results(run, results)


def test_the_report_plots_accuracy_against_training_flops(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    for method, target, seed, acc, flops in [
        ("dense", 0.0, 0, 0.80, 3e12),
        ("dense", 0.0, 1, 0.82, 3e12),
        ("magnitude", 0.9, 0, 0.70, 1e12),
        ("rigl", 0.9, 0, 0.72, 4e11),
    ]:
        with_flops(write_run(root, "cnn1d", method, target, seed, acc), flops)
    write_run(root, "cnn1d", "random", 0.9, 0, 0.4)  # an older run: no FLOPs, not drawn
    runs, _ = report.collect(root, progress=False)
    labels = report.plot_flops(runs, "test/acc", tmp_path / "flops.png")
    assert labels == ["dense", "magnitude", "rigl"]
    image = matplotlib.image.imread(tmp_path / "flops.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.std() > 0
    assert report.report(root, progress=False)["paths"]["flops.png"].exists()
