"""One weight used by several modules (the Transformer's tied embedding and softmax): VD and l0
act at every use with one log_sigma2 / log_alpha, the regulariser counts the weight once, and
sharing the layers cannot handle is refused before training. Also: under bf16 autocast the VD
variance path and the l0 gates run in float32."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparse_lightning.callbacks import L0Regularization, VariationalDropout
from sparse_lightning.errors import ConfigError
from sparse_lightning.layers import l0 as l0_math
from sparse_lightning.layers import variational_dropout as vd_math
from sparse_lightning.layers.noise import NoiseSource
from sparse_lightning.layers.reparameterise import (
    L0_CLASSES,
    VD_CLASSES,
    optimizer_groups,
    reparameterise,
    strip_reparameterisation,
)
from sparse_lightning.masks import strip_masks
from sparse_lightning.models.transformer import EOS_ID, build_transformer
from sparse_lightning.modules import ClassificationModule, TranslationModule
from sparse_lightning.schedules import RegulariserRamp
from tests.conftest import run_cli
from tests.test_wmt_transformer import TINY_MODEL, make_corpus

VOCAB = 50
LOOKED_UP = 30  # inputs use ids below this; the other rows are reached by the output layer only
EXTRA = {"vd": "log_sigma2", "l0": "log_alpha"}
CLASSES = {"vd": VD_CLASSES, "l0": L0_CLASSES}
INIT = {"vd": {"log_sigma2_init": -10.0, "threshold": 3.0}, "l0": {}}


class TiedToy(nn.Module):
    """A bag-of-words classifier whose output layer is its embedding (a tied language model)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(ids).mean(dim=1))))


class Scaled(nn.Module):
    """Multiplies its input by its weight elementwise: a use no VD / l0 layer class covers."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def tiny_transformer() -> nn.Module:
    return build_transformer(
        VOCAB, d_model=16, ffn_dim=32, encoder_layers=1, decoder_layers=1, heads=2,
        max_positions=32,
    )  # fmt: skip


def translation_batches(count: int = 4, size: int = 4, length: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        source = torch.randint(3, LOOKED_UP, (size, length), generator=g)
        target = torch.randint(3, LOOKED_UP, (size, length), generator=g)
        eos = torch.full((size, 1), EOS_ID)
        batches.append(
            {
                "input_ids": source,
                "attention_mask": torch.ones_like(source),
                "decoder_input_ids": torch.cat([torch.zeros_like(eos), target], dim=1),
                "labels": torch.cat([target, eos], dim=1),
            }
        )
    return batches


def toy_setup() -> tuple[pl.LightningModule, DataLoader, str, Callable]:
    """(module, loader, owner of the shared weight, batch -> logits)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, LOOKED_UP, (64, 5), generator=g)
    data = TensorDataset(ids, torch.randint(0, VOCAB, (64,), generator=g))
    module = ClassificationModule(
        TiedToy(), lambda p: torch.optim.SGD(p, lr=0.1), num_classes=VOCAB
    )
    return module, DataLoader(data, batch_size=16), "embed", lambda m, batch: m(batch[0])


def transformer_setup() -> tuple[pl.LightningModule, DataLoader, str, Callable]:
    module = TranslationModule(tiny_transformer(), lambda p: torch.optim.SGD(p, lr=0.1))
    loader = DataLoader(translation_batches(), batch_size=None)

    def logits(model: nn.Module, batch: dict) -> torch.Tensor:
        keys = ("input_ids", "attention_mask", "decoder_input_ids")
        return model(**{k: batch[k] for k in keys}).logits

    return module, loader, "model.shared", logits


SETUPS = pytest.mark.parametrize("setup", [toy_setup, transformer_setup], ids=["toy", "mt"])
KINDS = pytest.mark.parametrize("kind", ["vd", "l0"])


def make_method(kind: str, weight: float) -> pl.Callback:
    if kind == "vd":
        return VariationalDropout(kl_weight=weight, ramp=RegulariserRamp(0, 0))
    return L0Regularization(weight=weight, ramp=RegulariserRamp(0, 0))


def trainer(max_steps: int, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps, callbacks=callbacks, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0,
    )  # fmt: skip


class SharedGradient(pl.Callback):
    """Keeps the gradient that the first backward leaves on ``owner``'s ``attr``."""

    def __init__(self, owner: str, attr: str) -> None:
        self.owner, self.attr, self.grad = owner, attr, None
        self.calls = 0

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.calls += 1
        grad = getattr(pl_module.model.get_submodule(self.owner), self.attr).grad
        self.grad = None if grad is None else grad.clone()


def kl_formula(theta: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    """Molchanov et al. (2017) eq. 14 with log_alpha clipped to [-8, 8], summed."""
    theta, log_sigma2 = theta.double(), log_sigma2.double()
    la = (log_sigma2 - torch.log(theta * theta + 1e-8)).clamp(-8.0, 8.0)
    neg_kl = 0.63576 * torch.sigmoid(1.87320 + 1.48695 * la) - 0.5 * torch.log1p(torch.exp(-la))
    return -(neg_kl - 0.63576).sum()


def l0_formula(log_alpha: torch.Tensor) -> torch.Tensor:
    """Expected number of non-zero hard concrete gates (Louizos et al. 2018)."""
    return torch.sigmoid(log_alpha.double() - (2.0 / 3.0) * math.log(0.1 / 1.1)).sum()


def unique_regulariser(model: nn.Module, kind: str) -> torch.Tensor:
    """The regulariser over the model's distinct Parameters (named_parameters lists each once)."""
    params = dict(model.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for name, extra in params.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf != EXTRA[kind]:
            continue
        if kind == "vd":
            total = total + kl_formula(params[f"{prefix}.weight"], extra)
        else:
            total = total + l0_formula(extra)
    return total


# -- every use trains the shared parameter ----------------------------------------------------
@KINDS
@SETUPS
def test_the_task_loss_alone_reaches_the_shared_parameter_at_every_use(kind, setup):
    pl.seed_everything(0)
    module, loader, owner, _ = setup()
    recorder = SharedGradient(owner, EXTRA[kind])
    trainer(1, [make_method(kind, 0.0), recorder]).fit(module, loader)  # regulariser weight 0
    assert recorder.calls == 1
    grad = recorder.grad
    assert grad is not None, "no use of the shared weight saw its noise / gates"
    assert grad[:LOOKED_UP].abs().sum() > 0  # rows of input tokens: lookups and output layer
    assert grad[LOOKED_UP:].abs().sum() > 0  # rows reached by the output layer alone


@KINDS
def test_one_parameter_on_every_use_counted_once_in_loss_optimiser_and_state_dict(kind):
    pl.seed_everything(0)
    module, loader, owner, logits = transformer_setup()
    method = make_method(kind, 0.5)
    method.setup(trainer(1, []), module, "fit")
    model, attr = module.model, EXTRA[kind]
    shared = getattr(model.get_submodule(owner), attr)
    uses = [m for m in model.modules() if getattr(m, "weight", None) is model.model.shared.weight]
    assert len(uses) == 4  # shared, encoder / decoder lookups, lm_head
    assert all(getattr(use, attr) is shared for use in uses)
    model.train()
    logits(model, next(iter(loader)))  # every use leaves its regulariser term
    torch.testing.assert_close(
        method.loss().double(), 0.5 * unique_regulariser(model, kind), rtol=1e-5, atol=0.0
    )
    extra = optimizer_groups(module)[1]["params"]
    assert sum(p is shared for p in extra) == 1
    assert sum(p.numel() for p in extra) == sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(attr)
    )
    plain = strip_reparameterisation(strip_masks(model.state_dict()))
    assert not any(key.endswith(attr) for key in plain)
    tiny_transformer().load_state_dict(plain)  # strict: the unmodified class takes it
    twin = copy.deepcopy(model)
    assert getattr(twin.lm_head, attr) is getattr(twin.model.shared, attr)
    assert twin.lm_head.weight is twin.model.shared.weight
    restored, _, _, _ = transformer_setup()  # as a resumed run: set up, then the checkpoint
    make_method(kind, 0.5).setup(trainer(1, []), restored, "fit")
    restored.model.load_state_dict(model.state_dict())  # strict: every use's key is there
    assert getattr(restored.model.lm_head, attr) is getattr(restored.model.model.shared, attr)
    assert torch.equal(getattr(restored.model.lm_head, attr), shared)


@KINDS
@SETUPS
def test_eval_output_drops_entries_whose_shared_parameter_passes_the_threshold(kind, setup):
    pl.seed_everything(0)
    module, loader, owner, logits = setup()
    model = module.model
    reparameterise(model, f"{owner}.weight", CLASSES[kind], **INIT[kind])
    model.eval()
    batch = next(iter(loader))
    before = logits(model, batch)
    pruned = torch.arange(LOOKED_UP, VOCAB)
    with torch.no_grad():  # VD: log_alpha = 10 - log(theta^2) > 3; l0: evaluation gate 0
        getattr(model.get_submodule(owner), EXTRA[kind])[pruned] = 10.0 if kind == "vd" else -10.0
    after = logits(model, batch)
    bias = getattr(model, "final_logits_bias", torch.zeros(1, VOCAB))[0, pruned]
    assert torch.equal(after[..., pruned], bias.expand_as(after[..., pruned]))
    assert not torch.equal(before[..., pruned], after[..., pruned])


# -- sharing the layers cannot handle ---------------------------------------------------------
def test_a_shared_weight_with_another_kind_of_use_is_refused_in_one_line():
    model = TiedToy()
    model.scale = Scaled(model.embed.weight)
    with pytest.raises(ConfigError) as error:
        reparameterise(model, "embed.weight", VD_CLASSES, **INIT["vd"])
    assert str(error.value) == (
        "cannot reparameterise 'embed.weight': 'scale' (Scaled.weight) uses the same tensor; "
        "every use of a shared weight must be the weight of a Linear, Conv1d, Conv2d or Embedding "
        "(exclude it, e.g. method.selection.exclude=['embed.weight'])"
    )
    assert type(model.embed) is nn.Embedding and type(model.out) is nn.Linear  # left as it was


def test_a_shared_weight_of_the_wrong_shape_for_a_use_is_refused_before_training():
    pl.seed_everything(0)
    module, loader, _, _ = toy_setup()
    module.model.conv = nn.Conv1d(8, VOCAB, 1)
    module.model.conv.weight = module.model.embed.weight  # (50, 8): a Conv1d needs (50, 8, 1)
    recorder = SharedGradient("embed", "log_alpha")
    with pytest.raises(ConfigError) as error:
        trainer(1, [make_method("l0", 1e-3), recorder]).fit(module, loader)
    assert str(error.value) == (
        "cannot reparameterise 'embed.weight': 'conv' (Conv1d) uses it as its weight, which has "
        "shape (50, 8, 1) in a Conv1d, not (50, 8) "
        "(exclude it, e.g. method.selection.exclude=['embed.weight'])"
    )
    assert recorder.calls == 0


# -- l0 draws gates for every use, like the reference ---------------------------------------
def test_an_l0_lookup_draws_gates_for_each_looked_up_entry():
    torch.manual_seed(0)
    layer = reparameterise(nn.Sequential(nn.Embedding(10, 16)), "0.weight", L0_CLASSES)
    rows = layer(torch.full((1, 8), 3))[0]  # one token, eight times
    assert rows.shape == (8, 16)
    assert len({tuple(row.tolist()) for row in rows}) == 8
    with torch.no_grad():  # each is theta times a gate in [0, 1]
        ratio = rows / layer.weight[3]
    assert (ratio >= 0).all() and (ratio <= 1 + 1e-6).all()


# -- whole runs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method",
    [
        ["method=variational_dropout", "method.kl_weight=1e-3", "method.log_sigma2_init=-2",
         "method.threshold=1.0"],
        ["method=l0", "method.weight=1e-2"],
    ],
    ids=["vd", "l0"],
)  # fmt: skip
def test_a_short_run_prunes_part_of_the_transformer_embedding(tmp_path: Path, method):
    """The full regulariser weight from step 0 and a 5x learning rate (Adam moves every
    log_sigma2 / log_alpha by ~lr a step): the embedding's drift alone, with no task gradient on
    it, would prune all of it within 20 steps; its uses' gradients keep part of it."""
    corpus = make_corpus(tmp_path)
    run = tmp_path / "run"
    run_cli(
        run, "experiment=sos_transformer", "model=transformer_tiny", *TINY_MODEL,
        f"data.root={corpus}", "data.vocab_size=64", "data.max_tokens=256", "global_tokens=null",
        "data.max_length=16",
        "data.max_eval_length=32", "data.num_workers=0", "task.lr_scheduler.warmup_steps=10",
        "task.val_bleu_batches=1", "task.max_decode_extra=5", "trainer.max_steps=20",
        "trainer.val_check_interval=20", "logger=none", "sparsity=s90", "method.ramp.begin_step=0",
        "method.ramp.end_step=0", "task.lr_scheduler.scale=10", *method,
    )  # fmt: skip
    results = json.loads((run / "results.json").read_text())
    embedding = results["layer_sparsity"]["model.shared.weight"]
    assert 0.0 < embedding < 1.0, f"embedding sparsity {embedding}"


# -- float32 under bf16 autocast ---------------------------------------------------------------
def _std_formula(op64: Callable, x: torch.Tensor, theta: torch.Tensor, log_sigma2: torch.Tensor):
    """sqrt(op(x^2, sigma^2) + 1e-8) in float64, sigma^2 = exp(clip(log_alpha)) (theta^2 + 1e-8)."""
    theta = theta.detach().double()
    t = theta * theta + 1e-8
    sigma2 = torch.exp((log_sigma2.double() - torch.log(t)).clamp(-8.0, 8.0)) * t
    return torch.sqrt(op64(x.double() ** 2, sigma2) + 1e-8)


LAYERS = pytest.mark.parametrize(
    "make, x, op64",
    [
        (lambda: nn.Linear(16, 8), torch.randn(4, 16) + 2.0, F.linear),
        (lambda: nn.Conv1d(4, 8, 3, padding=1), torch.randn(2, 4, 9) + 2.0,
         lambda x, w: F.conv1d(x, w, padding=1)),
    ],
    ids=["linear", "conv1d"],
)  # fmt: skip


@LAYERS
def test_vd_output_noise_at_log_sigma2_minus_15_survives_bf16_autocast(make, x, op64):
    """mean + std * noise with noise +1 and -1: the difference is 2 std, std ~ 1e-2 of a mean
    ~ 1, under bf16's resolution there; computed in float32 it matches the float64 formula."""
    torch.manual_seed(0)
    module = make()
    op = F.linear if isinstance(module, nn.Linear) else module._conv_forward
    log_sigma2 = torch.full_like(module.weight, -15.0)
    outs = []
    for sign in (1.0, -1.0):
        shape = op(x, module.weight, module.bias).shape
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = vd_math.train_forward(
                op, x, module.weight, log_sigma2, module.bias, torch.full(shape, sign)
            )
        assert out.dtype == torch.float32
        outs.append(out.double())
    expected = 2.0 * _std_formula(op64, x, module.weight, log_sigma2)
    torch.testing.assert_close(outs[0] - outs[1], expected, rtol=1e-3, atol=1e-6)


@LAYERS
def test_vd_layer_samples_in_float32_under_bf16_autocast(make, x, op64):
    """The layer's training output for two noise seeds differs by std * (n1 - n2), the normals
    each seed's NoiseSource draws, std from the float64 formula."""
    torch.manual_seed(0)
    layer = reparameterise(nn.Sequential(make()), "0.weight", VD_CLASSES, **INIT["vd"])
    with torch.no_grad():
        layer.log_sigma2.fill_(-15.0)
    outs, noises = [], []
    for seed in (1, 2):
        layer.noise_source = NoiseSource(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.float32
        outs.append(out.detach().double())
        noises.append(NoiseSource(seed).normal_(torch.empty(out.shape)).double())
    std = _std_formula(op64, x, layer.weight, layer.log_sigma2)
    expected = std * (noises[0] - noises[1])
    torch.testing.assert_close(outs[0] - outs[1], expected, rtol=1e-3, atol=1e-6)


def test_l0_gates_are_float32_under_bf16_autocast():
    theta = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    log_alpha = torch.linspace(-3.0, 3.0, theta.numel()).view_as(theta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight, penalty = l0_math.gated_weight_and_penalty(theta, log_alpha, source=NoiseSource(3))
    eps = l0_math.UNIFORM_EPS
    u = NoiseSource(3).uniform_(torch.empty_like(theta), eps, 1.0 - eps).double()
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha.double()) / (2.0 / 3.0))
    expected = theta.double() * torch.clamp(s * 1.2 - 0.1, 0.0, 1.0)
    assert weight.dtype == torch.float32 and penalty.dtype == torch.float32
    torch.testing.assert_close(weight.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(penalty.double(), l0_formula(log_alpha), rtol=1e-5, atol=0.0)
