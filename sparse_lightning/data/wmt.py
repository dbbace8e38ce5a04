"""Parallel text (WMT14 en-de) with a joint sentencepiece vocabulary and token-count batches.

Layout: ``root/{train,valid,test}.{src,tgt}``, one raw (untokenised) sentence per line, aligned
by line; ``sparse-prepare-wmt`` writes WMT14 en-de in it. The joint subword model is trained on
the training text once and cached beside the data (``root/spm<vocab_size>.model``).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import sentencepiece as spm
from torch.utils.data import DataLoader, Dataset

from sparse_lightning.data.token_batches import TokenBatchSampler, pad
from sparse_lightning.errors import ConfigError
from sparse_lightning.models.transformer import EOS_ID, PAD_ID

log = logging.getLogger(__name__)
UNK_ID = 1
SPLITS = ("train", "valid", "test")
IGNORE_INDEX = -100  # label value skipped by the loss


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def train_sentencepiece(
    files: list[Path], model_path: Path, vocab_size: int, sample_sentences: int = 2_000_000
) -> None:
    """Joint unigram subword model over ``files`` (Kudo 2018), written atomically to
    ``model_path``; ids: pad 0, unk 1, eos 2, no bos. The vocabulary may come out smaller than
    ``vocab_size`` on small corpora (soft limit)."""
    prefix = model_path.with_name(f".{model_path.stem}.{os.getpid()}.tmp")
    spm.SentencePieceTrainer.train(
        input=[str(f) for f in files],
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        character_coverage=1.0,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        bos_id=-1,
        hard_vocab_limit=False,
        input_sentence_size=sample_sentences,
        shuffle_input_sentence=True,
        minloglevel=2,
    )
    os.replace(f"{prefix}.vocab", model_path.with_suffix(".vocab"))
    os.replace(f"{prefix}.model", model_path)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block: the
    processes of one run that all prepare the same data wait for the first instead of
    training the same subword model side by side."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class EncodedText:
    """Token ids of many sentences in one flat int32 array (compact for 4.5M pairs)."""

    tokens: np.ndarray
    offsets: np.ndarray  # sentence i is tokens[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_lists(cls, ids: list[list[int]]) -> EncodedText:
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for s in ids for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(tokens, offsets)

    @classmethod
    def concat(cls, parts: list[EncodedText]) -> EncodedText:
        tokens = np.concatenate([p.tokens for p in parts]) if parts else np.zeros(0, np.int32)
        lengths = np.concatenate([p.lengths() for p in parts]) if parts else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(tokens, offsets)

    def select(self, keep: np.ndarray) -> EncodedText:
        """The sentences where the bool array ``keep`` is True."""
        lengths = self.lengths()
        tokens = self.tokens[np.repeat(keep, lengths)]
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        return EncodedText(tokens, offsets)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class ParallelText(Dataset):
    """Pairs of encoded source/target sentences (each ending in eos), plus raw references."""

    def __init__(
        self, src: EncodedText, tgt: EncodedText, references: list[str] | None = None
    ) -> None:
        self.src, self.tgt, self.references = src, tgt, references

    def __len__(self) -> int:
        return len(self.src.offsets) - 1

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, str | None]:
        return self.src[i], self.tgt[i], self.references[i] if self.references else None

    def lengths(self) -> np.ndarray:
        return np.maximum(self.src.lengths(), self.tgt.lengths())


def collate(items: list[tuple[np.ndarray, np.ndarray, str | None]]) -> dict[str, Any]:
    """Padded encoder input, teacher-forcing decoder input (pad-started, shifted right) and
    labels (pad -> -100), plus the raw references for BLEU."""
    src = [s for s, _, _ in items]
    tgt = [t for _, t, _ in items]
    input_ids = pad(src, PAD_ID)
    labels = pad(tgt, IGNORE_INDEX)
    decoder_input_ids = pad([np.concatenate(([PAD_ID], t[:-1])) for t in tgt], PAD_ID)
    return {
        "input_ids": input_ids,
        "attention_mask": input_ids.ne(PAD_ID),
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
        "references": [r for _, _, r in items],
    }


class ParallelTextDataModule(pl.LightningDataModule):
    """``root/{train,valid,test}.{src_lang,tgt_lang}`` as token-count batches.

    Training pairs with more than ``max_length`` subword tokens (eos included) on either side
    are dropped; evaluation sources are cut to ``max_eval_length`` tokens, references stay raw.
    ``max_tokens`` is per device.
    """

    def __init__(
        self,
        root: str,
        src_lang: str = "en",
        tgt_lang: str = "de",
        vocab_size: int = 32000,
        max_tokens: int = 4096,
        max_length: int = 64,
        max_eval_length: int = 256,
        spm_sample_sentences: int = 2_000_000,
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(str(root))
        missing = [
            f"{split}.{lang}"
            for split in SPLITS
            for lang in (src_lang, tgt_lang)
            if not (self.root / f"{split}.{lang}").is_file()
        ]
        if missing:
            raise ConfigError(
                f"data.root={root} lacks {', '.join(missing)}; it must hold "
                f"{{train,valid,test}}.{{{src_lang},{tgt_lang}}} (see sparse-prepare-wmt)"
            )
        if vocab_size < 16:
            raise ConfigError(f"data.vocab_size={vocab_size} must be at least 16")
        if max_length < 2 or max_tokens < max_length:
            raise ConfigError(
                f"data.max_tokens={max_tokens} must be >= data.max_length={max_length} >= 2"
            )
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens
        self.max_length = max_length
        self.max_eval_length = max_eval_length
        self.spm_sample_sentences = spm_sample_sentences
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, ParallelText] = {}
        self._tokenizer: spm.SentencePieceProcessor | None = None

    @property
    def spm_path(self) -> Path:
        return self.root / f"spm{self.vocab_size}.model"

    def prepare_data(self) -> None:
        """Train the joint subword model once. Every process of a run may call this before
        the model is built (``model_settings``): the first trains under a lock, the others
        then read its file (training twice on a sample gives different pieces)."""
        if self.spm_path.exists():
            return
        with exclusive_lock(self.spm_path.with_name(f".{self.spm_path.name}.lock")):
            if self.spm_path.exists():
                return
            files = [self.root / f"train.{lang}" for lang in (self.src_lang, self.tgt_lang)]
            log.info("training a %d-piece sentencepiece model on %s", self.vocab_size, files)
            train_sentencepiece(files, self.spm_path, self.vocab_size, self.spm_sample_sentences)

    @property
    def tokenizer(self) -> spm.SentencePieceProcessor:
        """The joint subword model (trained on first use)."""
        if self._tokenizer is None:
            self.prepare_data()
            self._tokenizer = spm.SentencePieceProcessor(model_file=str(self.spm_path))
        return self._tokenizer

    @property
    def tokenizer_vocab_size(self) -> int:
        """Pieces the trained tokenizer really has: ``data.vocab_size`` or fewer, since
        sentencepiece's soft limit stops where a small corpus runs out of pieces."""
        return self.tokenizer.get_piece_size()

    def model_settings(self) -> dict[str, int]:
        """What the model must take from the data: its vocabulary is exactly the tokenizer's
        (larger, beam search emits ids that cannot be decoded; smaller, encoded ids overflow
        the embedding). A corpus too small for ``data.vocab_size`` is noted in one line."""
        size = self.tokenizer_vocab_size
        if size != self.vocab_size:
            log.warning(
                "data.vocab_size=%d asked, but the corpus in %s gives a %d-piece tokenizer: "
                "the model's vocabulary is %d",
                self.vocab_size, self.root, size, size,
            )  # fmt: skip
        return {"vocab_size": size}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split in SPLITS:
            src_lines = read_lines(self.root / f"{split}.{self.src_lang}")
            tgt_lines = read_lines(self.root / f"{split}.{self.tgt_lang}")
            if len(src_lines) != len(tgt_lines):
                raise ConfigError(
                    f"{self.root}/{split}.{self.src_lang} has {len(src_lines)} lines but "
                    f"{split}.{self.tgt_lang} has {len(tgt_lines)}; they must be aligned"
                )
            src, tgt = self.encode(src_lines), self.encode(tgt_lines)
            if split == "train":
                keep = (src.lengths() <= self.max_length) & (tgt.lengths() <= self.max_length)
                src, tgt, refs = src.select(keep), tgt.select(keep), None
                log.info("train: kept %d of %d pairs (max_length)", keep.sum(), len(keep))
            else:
                cut = [s[: self.max_eval_length - 1].tolist() + [EOS_ID]
                       if len(s) > self.max_eval_length else s.tolist()
                       for s in (src[i] for i in range(len(src_lines)))]  # fmt: skip
                src, refs = EncodedText.from_lists(cut), tgt_lines
            self.datasets[split] = ParallelText(src, tgt, refs)
        if len(self.datasets["train"]) == 0:
            raise ConfigError(f"data.max_length={self.max_length} drops every training pair")

    def encode(self, lines: list[str], chunk: int = 100_000) -> EncodedText:
        """Subword ids of each line, eos appended (in chunks, to bound memory)."""
        return EncodedText.concat(
            [
                EncodedText.from_lists(
                    self.tokenizer.encode(lines[i : i + chunk], out_type=int, add_eos=True)
                )
                for i in range(0, len(lines), chunk)
            ]
        )

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Detokenised text of each id sequence, cut at the first eos; pad is dropped."""
        cut = [s[: s.index(EOS_ID)] if EOS_ID in s else s for s in ids]
        return self.tokenizer.decode([[t for t in s if t != PAD_ID] for s in cut])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        sampler = TokenBatchSampler(dataset.lengths(), self.max_tokens, shuffle, self.seed)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
