"""Sequence-to-sequence translation: label-smoothed cross entropy, beam search, sacrebleu BLEU."""

from __future__ import annotations

from typing import Any

import sacrebleu
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from sparse_lightning.modules.base import OptimizerFactory, SchedulerFactory, SparseTaskModule

IGNORE_INDEX = -100


class TranslationModule(SparseTaskModule):
    """Trains ``model`` (a transformers encoder-decoder) on token batches from
    ``sparse_lightning.data.wmt``.

    Training loss: token-level cross entropy with label smoothing (Szegedy et al. 2016), mean
    over non-pad target tokens. Evaluation logs ``{stage}/loss`` (unsmoothed, token-weighted)
    and ``{stage}/bleu``: sacrebleu corpus BLEU (13a tokenisation) of the detokenised beam-search
    output (``num_beams``, ``length_penalty``) against the raw reference lines. During training
    only the first ``val_bleu_batches`` validation batches are decoded (null: all); the test
    split is always decoded in full. Hypotheses of the last evaluation are kept in
    ``hypotheses`` (and the references in ``references``).
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
    ) -> None:
        super().__init__(model, optimizer, lr_scheduler, lr_scheduler_interval)
        self.label_smoothing = label_smoothing
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.max_decode_extra = max_decode_extra
        self.val_bleu_batches = val_bleu_batches
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.hypotheses: list[str] = []
        self.references: list[str] = []

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
        bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score if hypotheses else 0.0
        self.log(f"{stage}/bleu", bleu, prog_bar=True)


def _gather(strings: list[str]) -> list[str]:
    """All ranks' strings, in rank order (the same list on every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return strings
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, strings)
    return [s for part in gathered for s in part]
