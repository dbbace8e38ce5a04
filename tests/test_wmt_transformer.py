"""Transformer / WMT path: layer selection, data, token batches, BLEU, presets, CLI runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import sacrebleu
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from sparse_lightning.callbacks import MagnitudePruning
from sparse_lightning.config import CONF_DIR
from sparse_lightning.data.token_batches import TokenBatchSampler, token_batches
from sparse_lightning.data.toy import make_corpus
from sparse_lightning.data.wmt import ParallelTextDataModule
from sparse_lightning.errors import ConfigError
from sparse_lightning.lr_schedules import inverse_sqrt, inverse_sqrt_factor
from sparse_lightning.models.transformer import EOS_ID, build_transformer
from sparse_lightning.modules import TranslationModule
from sparse_lightning.modules.translation import tokenized_bleu
from sparse_lightning.schedules import PolynomialSchedule
from sparse_lightning.selection import select_prunable
from tests.conftest import run_cli

TINY_MODEL = [
    "model.d_model=32", "model.ffn_dim=64", "model.heads=2",
    "model.encoder_layers=1", "model.decoder_layers=1", "model.max_positions=64",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("wmt"))


def tiny_model(vocab_size: int = 64) -> nn.Module:
    return build_transformer(
        vocab_size, d_model=32, ffn_dim=64, encoder_layers=2, decoder_layers=2, heads=2,
        max_positions=64,
    )  # fmt: skip


def test_prunable_set_is_attention_ffn_and_the_one_embedding() -> None:
    model = tiny_model()
    names = select_prunable(model)
    expected = ["model.shared.weight"] + [
        f"model.{side}.layers.{i}.{proj}.weight"
        for side, projs in (
            ("encoder", ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                         "self_attn.out_proj", "fc1", "fc2"]),
            ("decoder", ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                         "self_attn.out_proj", "encoder_attn.k_proj", "encoder_attn.v_proj",
                         "encoder_attn.q_proj", "encoder_attn.out_proj", "fc1", "fc2"]),
        )
        for i in range(2)
        for proj in projs
    ]  # fmt: skip
    assert names == expected
    assert model.lm_head.weight is model.model.shared.weight  # tied: pruned and counted once
    assert not model.model.encoder.embed_positions.weight.requires_grad
    dense_embedding = select_prunable(model, exclude=["model.shared.weight"])
    assert dense_embedding == expected[1:]
    # the paper's base size: 44.1M attention/FFN weights + 16.4M embedding
    base = build_transformer(32000)
    params = dict(base.named_parameters())
    assert sum(params[n].numel() for n in select_prunable(base)) == 44_040_192 + 16_384_000


def test_magnitude_pruning_prunes_the_tied_embedding_once() -> None:
    model = tiny_model()
    method = MagnitudePruning(PolynomialSchedule(0.9, begin_step=0, end_step=1, frequency=1))
    mask_set = method.attach(model)
    method.update_masks(1)
    assert mask_set.sparsity() == pytest.approx(0.9, abs=2e-3)
    assert model.lm_head.weight.eq(0).float().mean().item() == pytest.approx(0.9, abs=2e-3)
    pos = model.model.decoder.embed_positions.weight
    assert pos.ne(0).float().mean() > 0.4 and not hasattr(
        model.model.decoder.embed_positions, "weight_mask"
    )


def test_inverse_sqrt_matches_formula() -> None:
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = inverse_sqrt(optimizer, d_model=512, warmup_steps=8000)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step in (0, 9, 19):
        t = step + 1
        assert lrs[step] == pytest.approx(2.0 * 512**-0.5 * t * 8000**-1.5)
    peak = 2.0 * 512**-0.5 * 8000**-0.5  # at t = warmup both branches agree
    assert inverse_sqrt_factor(7999, 512) == pytest.approx(peak) == pytest.approx(9.882e-4, 1e-3)
    assert inverse_sqrt_factor(31999, 512) == pytest.approx(peak / 2)  # t^-0.5 decay


def test_token_batches_respect_max_tokens_and_bucket_by_length() -> None:
    lengths = np.random.default_rng(0).integers(2, 30, 500)
    order = np.argsort(lengths, kind="stable")
    batches = token_batches(lengths, 64, order)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) * lengths[b].max() <= 64 for b in batches)
    sampler = TokenBatchSampler(lengths, 64, shuffle=True, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and len(sampler) == len(first)
    long_alone = token_batches(np.array([3, 40, 3]), 16, np.array([0, 2, 1]))
    assert long_alone == [[0, 2], [1]]
    with pytest.raises(ConfigError, match="max_tokens=0"):
        TokenBatchSampler(lengths, 0, shuffle=False)


def test_parallel_text_data_module(corpus: Path) -> None:
    dm = ParallelTextDataModule(str(corpus), vocab_size=64, max_tokens=128, max_length=12,
                                num_workers=0)  # fmt: skip
    dm.setup("fit")
    assert (corpus / "spm64.model").exists()
    assert dm.tokenizer.get_piece_size() <= 64 and dm.tokenizer.eos_id() == EOS_ID
    train = dm.datasets["train"]
    assert 0 < len(train) <= 300 and train.lengths().max() <= 12
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].numel() <= 128
    labels, dec = batch["labels"], batch["decoder_input_ids"]
    real = labels[:, 1:] >= 0  # teacher forcing: the decoder reads the previous label
    assert torch.equal(dec[:, 1:][real], labels[:, :-1][real])
    assert (dec[:, 0] == 0).all() and (labels == EOS_ID).sum() == len(labels)
    # decoding the encoded references gives them back (detokenised)
    refs = batch["references"]
    ids = [[t for t in row if t >= 0] for row in labels.tolist()]
    assert dm.decode(ids) == refs
    with pytest.raises(ConfigError, match="lacks"):
        ParallelTextDataModule(str(corpus / "nowhere"))


def test_beam_search_bleu_is_sacrebleu_of_the_decoded_output(corpus: Path) -> None:
    pl.seed_everything(0)
    dm = ParallelTextDataModule(str(corpus), vocab_size=64, max_tokens=256, max_length=16,
                                num_workers=0)  # fmt: skip
    module = TranslationModule(
        tiny_model(dm.tokenizer_vocab_size), optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        num_beams=4, length_penalty=0.6, max_decode_extra=5,
    )  # fmt: skip
    trainer = pl.Trainer(
        max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    references = (corpus / "test.de").read_text(encoding="utf-8").splitlines()
    assert sorted(module.references) == sorted(references)
    expected = sacrebleu.corpus_bleu(module.hypotheses, [module.references]).score
    assert metrics["test/bleu"] == pytest.approx(expected, abs=1e-4)
    tokenized = tokenized_bleu(module.hypotheses, module.references, "de")
    assert metrics["test/bleu_tok"] == pytest.approx(tokenized, abs=1e-4)
    assert metrics["test/loss"] < np.log(64)  # it learned something
    assert all(isinstance(h, str) for h in module.hypotheses)


def test_sos_transformer_preset_holds_paper_values() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", ["experiment=sos_transformer", "method=dense", "data.root=/data"])
    m = cfg.model  # the dense baseline keeps transformer_base's dropout and label smoothing
    assert (m.d_model, m.ffn_dim, m.encoder_layers, m.decoder_layers, m.heads, m.dropout) == (
        512, 2048, 6, 6, 8, 0.1)  # fmt: skip
    assert m.vocab_size == 32000 and cfg.data.max_length == 64
    opt = cfg.task.optimizer
    assert opt._target_ == "torch.optim.Adam" and opt.lr == 1.0
    assert list(opt.betas) == [0.9, 0.997] and opt.eps == 1e-9
    sched = cfg.task.lr_scheduler
    assert sched.d_model == 512 and sched.warmup_steps == 8000 and sched.scale == 2.0
    assert cfg.task.label_smoothing == 0.1
    assert cfg.task.num_beams == 4 and cfg.task.length_penalty == 0.6
    assert cfg.trainer.max_steps == 500_000
    assert cfg.method._target_.endswith("DenseBaseline")  # per-method settings: test_paper_fidelity


def laptop_overrides(root: Path) -> list[str]:
    return [
        "experiment=sos_transformer",
        "model=transformer_tiny",
        *TINY_MODEL,
        f"data.root={root}",
        "data.vocab_size=64",
        "data.max_tokens=256",
        "data.max_length=16",
        "data.max_eval_length=32",
        "data.num_workers=0",
        "task.lr_scheduler.warmup_steps=10",
        "task.val_bleu_batches=1",
        "task.max_decode_extra=5",
        "trainer.max_steps=40",
        "trainer.val_check_interval=40",
        "global_tokens=null",  # no gradient accumulation towards the paper's 16384 tokens
        "logger=none",
    ]


@pytest.mark.parametrize("method", ["magnitude", "dense", "l0"])
def test_sos_transformer_runs_at_laptop_size(
    tmp_path: Path, corpus: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2-thread OpenMP stalls on a busy machine
    extra = ["sparsity=s90"]
    if method != "magnitude":  # each method with the preset's settings for it (conf/tuning/)
        extra = [f"method={method}", "sparsity=s90"]
    run_cli(tmp_path / "run", *laptop_overrides(corpus), *extra)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["model"] == "transformer_tiny" and results["steps"] == 40
    assert set(results["metrics"]) >= {"test/bleu", "test/bleu_tok", "test/loss"}
    assert 0.0 <= results["metrics"]["test/bleu"] <= 100.0
    if method == "l0":  # an outcome of the regulariser; 40 steps are far too few for 90 %
        assert 0.0 <= results["sparsity"] < 1.0
    else:
        expected = 0.9 if method == "magnitude" else 0.0
        assert results["sparsity"] == pytest.approx(expected, abs=2e-3)
    assert "model.shared.weight" in results["layer_sparsity"]


def test_preset_option_keeps_the_embedding_dense(corpus: Path) -> None:
    overrides = [*laptop_overrides(corpus), "method.selection.exclude=[model.shared.weight]"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides)
    method = instantiate(cfg.method)
    names = method.attach(tiny_model()).names
    assert "model.shared.weight" not in names and len(names) == 2 * 6 + 2 * 10


def test_prepare_wmt_writes_the_layout_from_local_archives(tmp_path: Path) -> None:
    import io
    import tarfile

    from sparse_lightning.prepare_wmt import ARCHIVES, SPLITS, main

    archives = tmp_path / "archives"
    archives.mkdir()
    members: dict[str, dict[str, str]] = {name: {} for name in ARCHIVES}
    for split, corpora in SPLITS.items():
        for k, (name, en_member, de_member) in enumerate(corpora):
            en = [f"{split} {k} sentence {i} &amp; more" for i in range(3)]
            de = [f"{split} {k} Satz {i} &amp; mehr" for i in range(3)]
            if split == "train":
                en[1] = "  "  # an empty side: dropped
            if en_member.endswith(".sgm"):
                en = [f'<seg id="{i + 1}">{s}</seg>' for i, s in enumerate(en)]
                de = [f'<seg id="{i + 1}">{s}</seg>' for i, s in enumerate(de)]
            members[name][en_member] = (
                "\n".join(["<doc>", *en]) if "sgm" in en_member else "\n".join(en)
            )
            members[name][de_member] = (
                "\n".join(["<doc>", *de]) if "sgm" in de_member else "\n".join(de)
            )
    for name, files in members.items():
        with tarfile.open(archives / name, "w:gz") as tar:
            for member, text in files.items():
                data = (text + "\n").encode()
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "wmt14"
    main([str(out), "--archives", str(archives)])
    train_en = (out / "train.en").read_text().splitlines()
    assert len(train_en) == 6 == len((out / "train.de").read_text().splitlines())
    assert train_en[0] == "train 0 sentence 0 &amp; more"  # plain text is kept as written
    assert (out / "valid.de").read_text().splitlines()[2] == "valid 0 Satz 2 &amp; mehr"
    assert (out / "test.en").read_text().splitlines() == [
        f"test 0 sentence {i} & more" for i in range(3)
    ]  # SGML entities are decoded
    with pytest.raises(SystemExit):
        main([str(tmp_path / "other"), "--archives", str(tmp_path)])
