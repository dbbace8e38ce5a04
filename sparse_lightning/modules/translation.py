"""Sequence-to-sequence translation: label-smoothed cross entropy, beam search, and BLEU two
ways: sacreBLEU of detokenised text, and the paper's tokenised BLEU."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import sacrebleu
import torch
import torch.distributed as dist
import torch.nn.functional as F
from sacremoses import MosesPunctNormalizer, MosesTokenizer
from torch import nn
from torchmetrics import MeanMetric

from sparse_lightning.errors import ConfigError
from sparse_lightning.modules.base import OptimizerFactory, SchedulerFactory, SparseTaskModule

IGNORE_INDEX = -100
# Metric names, after "{stage}/": sacreBLEU, and BLEU as the paper reports it (report.py and
# paper_results.py pair the paper's Transformer numbers with the second).
SACREBLEU, TOKENIZED_BLEU = "bleu", "bleu_tok"
_COMPOUND = re.compile(r"(\S)-(\S)")


def sacre_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU (Post 2018): corpus BLEU of detokenised text under its own 13a tokenisation,
    exp smoothing; comparable across papers that quote a sacreBLEU signature."""
    if not hypotheses:
        return 0.0
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def split_compounds(line: str) -> str:
    r"""``rich-text`` -> ``rich ##AT##-##AT## text``: the "ATAT" compound split of GNMT and
    ConvS2S evaluations, as the perl ``s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g`` of the paper's
    get_ende_bleu.sh (left to right, without overlap: ``a-b-c`` splits only the first hyphen)."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


@lru_cache(maxsize=4)
def _moses(lang: str) -> tuple[MosesPunctNormalizer, MosesTokenizer]:
    return MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)


def bleu_tokens(line: str, lang: str, hypothesis: bool) -> str:
    """One line as get_ende_bleu.sh scores it: Moses ``tokenizer.perl -l lang`` (escaping on,
    no aggressive hyphen split) then ``split_compounds``. Hypotheses first pass through
    ``replace-unicode-punctuation.perl`` (“ -> ", … -> ...); the script's references are
    tokenised only, so that step is not applied to them."""
    normalizer, tokenizer = _moses(lang)
    if hypothesis:
        line = normalizer.replace_unicode_punct(line)
    return split_compounds(tokenizer.tokenize(line, escape=True, return_str=True))


def tokenized_bleu(hypotheses: list[str], references: list[str], lang: str = "de") -> float:
    """BLEU as the paper reports it (Gale et al. 2019, state_of_sparsity get_ende_bleu.sh):
    ``bleu_tokens`` on both sides, then multi-bleu.perl: case-sensitive corpus BLEU over
    whitespace tokens, n <= 4, brevity penalty exp(1 - r/c) when c < r, no smoothing (0 when
    some n-gram order has no match); sacrebleu computes it with tokenize='none'."""
    if not hypotheses:
        return 0.0
    hyps = [bleu_tokens(h, lang, hypothesis=True) for h in hypotheses]
    refs = [bleu_tokens(r, lang, hypothesis=False) for r in references]
    bleu = sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)
    return bleu.corpus_score(hyps, [refs]).score


class TranslationModule(SparseTaskModule):
    """Trains ``model`` (a transformers encoder-decoder) on token batches from
    ``sparse_lightning.data.wmt``.

    Training loss: token-level cross entropy with label smoothing (Szegedy et al. 2016), mean
    over non-pad target tokens. Evaluation logs ``{stage}/loss`` (unsmoothed, token-weighted)
    and two BLEU scores of the detokenised beam-search output (``num_beams``,
    ``length_penalty``) against the raw reference lines: ``{stage}/bleu``, sacreBLEU
    (``sacre_bleu``), and ``{stage}/bleu_tok``, the paper's Moses-tokenised, compound-split
    multi-bleu (``tokenized_bleu`` in ``target_lang``). During training only the first
    ``val_bleu_batches`` validation batches are decoded (null: all); the test split is always
    decoded in full. Hypotheses of the last evaluation are kept in ``hypotheses`` (and the
    references in ``references``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_interval: str = "step",
        label_smoothing: float = 0.1,
        num_beams: int = 4,
        length_penalty: float = 0.6,
        max_decode_extra: int = 50,
        val_bleu_batches: int | None = 20,
        target_lang: str = "de",
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, lr_scheduler_interval)
        self.label_smoothing = label_smoothing
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.max_decode_extra = max_decode_extra
        self.val_bleu_batches = val_bleu_batches
        self.target_lang = target_lang
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.hypotheses: list[str] = []
        self.references: list[str] = []

    def setup(self, stage: str) -> None:
        """Stop before training, not at the first decode, when the model's vocabulary is not
        the tokenizer's (sparse-train sizes the model from ``datamodule.model_settings()``)."""
        data_size = getattr(self.trainer.datamodule, "tokenizer_vocab_size", None)
        model_size = self.model.config.vocab_size
        if data_size is not None and data_size != model_size:
            raise ConfigError(
                f"model.vocab_size={model_size} but the tokenizer has {data_size} pieces; "
                "build the model with the datamodule's tokenizer_vocab_size"
            )

    def _logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
        ).logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)
        task_loss = F.cross_entropy(
            logits.flatten(0, 1),
            batch["labels"].flatten(),
            ignore_index=IGNORE_INDEX,
            label_smoothing=self.label_smoothing,
        )
        return self.total_loss(task_loss)

    def translate(self, batch: dict[str, Any]) -> list[str]:
        """Beam-search translations of the batch's sources, detokenised."""
        max_positions = self.model.config.max_position_embeddings
        max_new = min(batch["input_ids"].shape[1] + self.max_decode_extra, max_positions - 1)
        out = self.model.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            num_beams=self.num_beams,
            length_penalty=self.length_penalty,
            max_new_tokens=max_new,
            early_stopping=True,
        )
        return self.trainer.datamodule.decode(out[:, 1:].tolist())  # drop the start token

    def _evaluate(self, batch: dict[str, Any], metric: MeanMetric, decode: bool) -> None:
        logits = self._logits(batch)
        labels = batch["labels"]
        tokens = labels.ne(IGNORE_INDEX).sum()
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        metric.update(loss, weight=tokens)
        if decode:
            self.hypotheses += self.translate(batch)
            self.references += batch["references"]

    def on_validation_epoch_start(self) -> None:
        self.hypotheses, self.references = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        cap = self.val_bleu_batches
        self._evaluate(batch, self.val_loss, decode=cap is None or batch_idx < cap)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val", self.val_loss)

    def on_test_epoch_start(self) -> None:
        self.hypotheses, self.references = [], []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, decode=True)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_loss)

    def _log_epoch(self, stage: str, loss: MeanMetric) -> None:
        self.log(f"{stage}/loss", loss.compute())
        loss.reset()
        hypotheses, references = _gather(self.hypotheses), _gather(self.references)
        self.log(f"{stage}/{SACREBLEU}", sacre_bleu(hypotheses, references), prog_bar=True)
        tokenized = tokenized_bleu(hypotheses, references, self.target_lang)
        self.log(f"{stage}/{TOKENIZED_BLEU}", tokenized, prog_bar=True)


def _gather(strings: list[str]) -> list[str]:
    """All ranks' strings, in rank order (the same list on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return strings
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, strings)
    return [s for part in gathered for s in part]
