"""The Transformer's vocabulary is the trained tokenizer's, whatever data.vocab_size asks: a
corpus too small for the paper's 32k pieces trains, validates (beam search + BLEU) and tests."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import sentencepiece as spm
import torch

from sparse_lightning.data.wmt import ParallelTextDataModule
from sparse_lightning.errors import ConfigError
from sparse_lightning.models.transformer import build_transformer
from sparse_lightning.modules import TranslationModule
from tests.conftest import run_cli
from tests.test_wmt_transformer import TINY_MODEL, make_corpus

TINY = {"d_model": 32, "ffn_dim": 64, "heads": 2, "encoder_layers": 1, "decoder_layers": 1,
        "max_positions": 64}  # fmt: skip


def test_a_corpus_below_the_asked_vocabulary_trains_validates_and_tests(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)  # 300 pairs of a 32-word toy language
    run = tmp_path / "run"
    result = run_cli(
        run,
        "experiment=sos_transformer",
        "model=transformer_tiny",
        *TINY_MODEL,
        f"data.root={corpus}",
        "data.max_tokens=256",
        "data.max_length=16",
        "data.max_eval_length=32",
        "data.num_workers=0",
        "global_tokens=null",
        "task.lr_scheduler.warmup_steps=10",
        "task.val_bleu_batches=1",
        "task.max_decode_extra=5",
        "trainer.max_steps=2",
        "trainer.val_check_interval=1",
        "sparsity=s90",
    )  # fmt: skip  (data.vocab_size stays the preset's 32000)
    pieces = spm.SentencePieceProcessor(model_file=str(corpus / "spm32000.model"))
    real = pieces.get_piece_size()
    assert real < 100  # sentencepiece's soft limit: far fewer pieces than asked
    output = (result.stdout + result.stderr).splitlines()
    notes = [line for line in output if "data.vocab_size=32000 asked" in line]
    assert len(notes) == 1 and f"{real}-piece tokenizer" in notes[0]

    results = json.loads((run / "results.json").read_text())
    expected = sum(p.numel() for p in build_transformer(real, **TINY).parameters())
    assert results["parameters"] == expected  # the model was built with the real vocabulary
    assert results["steps"] == 2
    assert {"test/bleu", "test/bleu_tok", "test/loss"} <= set(results["metrics"])
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    validations = [r for r in rows if r.get("val/bleu")]
    assert len(validations) == 2 and all(r["val/bleu_tok"] for r in validations)


def test_a_model_larger_than_the_tokenizer_stops_before_training(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, {"train": 60, "valid": 4, "test": 4})
    dm = ParallelTextDataModule(str(corpus), vocab_size=32000, max_tokens=256, max_length=16,
                                num_workers=0)  # fmt: skip
    module = TranslationModule(
        build_transformer(32000, **TINY), optimizer=lambda p: torch.optim.Adam(p, lr=1e-3)
    )
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    size = dm.tokenizer_vocab_size
    with pytest.raises(ConfigError, match=f"model.vocab_size=32000 but the tokenizer has {size}"):
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 0
    assert dm.model_settings() == {"vocab_size": size}


class Messages(logging.Handler):
    """The log messages of one logger, kept."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _prepare(root: str, start: Any, out: Any) -> None:
    """One process of a run preparing the data: reports whether it trained the subword model
    and the pieces it then reads."""
    logger, seen = logging.getLogger("sparse_lightning.data.wmt"), Messages()
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    dm = ParallelTextDataModule(root, vocab_size=500, spm_sample_sentences=3000, num_workers=0)
    start.wait()
    pieces = [dm.tokenizer.id_to_piece(i) for i in range(dm.tokenizer_vocab_size)]
    out.put((any(m.startswith("training a") for m in seen.messages), pieces))


def test_processes_preparing_the_same_data_train_the_tokenizer_once(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, {"train": 4000, "valid": 2, "test": 2})
    # spawn, not fork: a process forked from a test session whose earlier tests started OpenMP
    # or pool threads can deadlock in the child
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_prepare, args=(str(corpus), start, out)) for _ in range(3)]
    for worker in workers:
        worker.start()
    reports = [out.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sum(trained for trained, _ in reports) == 1  # the others waited on the lock
    assert all(pieces == reports[0][1] for _, pieces in reports)  # one tokenizer for all
