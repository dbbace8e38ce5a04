"""Training throughput of the paper's models on one GPU, per sparsity method, bf16 autocast.

    python bench/gpu.py [--steps 30] [--warmup 10] [--rounds 2] [--methods dense magnitude ...]
    python bench/gpu.py --smoke       # the same code path on CPU with toy sizes (a check)

ResNet-50 images/s (batch 256 at 224x224, channels_last) and Transformer base tokens/s (128
pairs of 32 target tokens, one optimiser step per batch: ``global_tokens=null``). Each run is
built by train's own setup, so the benchmark times what ``sparse-train experiment=sos_resnet50|
sos_transformer trainer=gpu method=<m> sparsity=s90`` trains: ``compose_config`` and
``assemble`` (init, method callback, data module, model, task module, Trainer with the run's
callbacks). Only what a measurement must not do is overridden: no validation, checkpoints,
logger or progress bar, ``trainer.max_steps`` = warmup + steps. The batches are synthetic and
already on the GPU (one batch, repeated: no input pipeline). The data module is constructed but
never read, so it gets only the files it checks, in a temporary folder: empty ``train/`` and
``val/`` folders for ImageNet; a toy corpus and a word tokenizer of exactly ``data.vocab_size``
pieces for WMT, so that the model keeps the paper's 32k vocabulary.

MP is measured in its steady state: masks at 90 % from step 1, pruned again after every
optimiser step (``method.schedule.begin_step=0 end_step=1 frequency=1``). Methods run
interleaved (round 1: all methods, round 2: all methods, ...). A step's time is the
synchronised interval between the ends of two consecutive steps (every callback's hooks
included); the median over the steps after ``--warmup``. Prints ``name: value`` lines,
including each method's throughput over dense (target for MP: >= 0.98).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import sentencepiece as spm
import torch
from torch.utils.data import DataLoader, IterableDataset

from sparse_lightning.config import compose_config, group_options
from sparse_lightning.data.toy import make_corpus, positive_int
from sparse_lightning.data.wmt import UNK_ID, ParallelTextDataModule
from sparse_lightning.models.transformer import EOS_ID, PAD_ID
from sparse_lightning.run.console import quiet_third_party
from sparse_lightning.train import assemble

DEFAULT_METHODS = ["dense", "magnitude", "variational_dropout", "l0"]
# Off in a measurement: validation, checkpoints (ours and Lightning's default), the progress bar
# (ours and Lightning's default) and the logger.
MEASUREMENT = [
    "+trainer.limit_val_batches=0",
    "+trainer.enable_checkpointing=false",
    "+trainer.enable_progress_bar=false",
    "callbacks.checkpoint=null",
    "callbacks.progress_bar=null",
    "logger=none",
]
STEADY_MP = [
    "method.schedule.begin_step=0",
    "method.schedule.end_step=1",
    "method.schedule.frequency=1",
]


class Repeat(IterableDataset):
    """The same ready batch, ``n`` times (no input pipeline in the measurement)."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


class StepTimer(pl.Callback):
    """When each training step ended, synchronised with the device. Passed last, it runs after
    every other callback's hooks, so an interval between two ends is all that one step does."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *a) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def step_times(self, warmup: int) -> list[float]:
        """Times of the steps after the first ``warmup`` (step 0 has no start: warmup >= 1)."""
        return [end - start for start, end in zip(self.ends[warmup - 1 :], self.ends[warmup:])]


def image_batch(batch: int, size: int, classes: int, device: str) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    return x, torch.randint(0, classes, (batch,), device=device)


def token_batch(pairs: int, length: int, vocab: int, device: str) -> dict[str, Any]:
    src = torch.randint(3, vocab, (pairs, length), device=device)
    tgt = torch.randint(3, vocab, (pairs, length), device=device)
    dec = torch.cat([torch.zeros_like(tgt[:, :1]), tgt[:, :-1]], dim=1)
    return {
        "input_ids": src,
        "attention_mask": torch.ones_like(src, dtype=torch.bool),
        "decoder_input_ids": dec,
        "labels": tgt,
        "references": [""] * pairs,
    }


def image_folder_layout(root: Path, vocab_size: int | None = None) -> Path:
    """What ImageFolderDataModule checks when it is built: ``train/`` and ``val/`` folders."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    return root


def parallel_text_layout(root: Path, vocab_size: int | None = None) -> Path:
    """What ParallelTextDataModule reads when it is built: the six text files (a toy corpus)
    and, where it caches its tokenizer, a word tokenizer of exactly ``vocab_size`` pieces, so
    that ``fit_model_to_data`` leaves ``model.vocab_size`` as asked."""
    assert vocab_size is not None
    make_corpus(root, {"train": 8, "valid": 1, "test": 1})
    words = root / "words.txt"
    words.write_text("\n".join(f"w{i}" for i in range(vocab_size)) + "\n", encoding="utf-8")
    model_file = ParallelTextDataModule(str(root), vocab_size=vocab_size).spm_path
    spm.SentencePieceTrainer.train(
        input=str(words),
        model_prefix=str(model_file.with_suffix("")),
        vocab_size=vocab_size,
        model_type="word",
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        bos_id=-1,
        minloglevel=2,
    )
    return root


@dataclass
class Workload:
    """One model as a preset trains it, with its synthetic batch."""

    preset: str
    overrides: list[str]
    batch: Any
    items: int  # images or tokens per batch
    unit: str
    data_layout: Callable[[Path, int | None], Path]
    vocab_size: int | None = None

    def run_overrides(self, method: str, data_root: Path, steps: int, gpu: bool) -> list[str]:
        vocab = [] if self.vocab_size is None else [f"data.vocab_size={self.vocab_size}"]
        return [
            f"experiment={self.preset}",
            *(["trainer=gpu"] if gpu else []),
            f"method={method}",
            "sparsity=s90",
            f"data.root={data_root}",
            *vocab,
            *self.overrides,
            f"trainer.max_steps={steps}",
            *MEASUREMENT,
            *(STEADY_MP if prunes_on_schedule(method) else []),
        ]


@lru_cache
def prunes_on_schedule(method: str) -> bool:
    """Whether ``method`` prunes on a gradual schedule (magnitude, random, snip)."""
    return "schedule" in compose_config([f"method={method}"]).method


def workloads(smoke: bool, device: str) -> dict[str, Workload]:
    """The two paper models (toy sizes for ``--smoke``), by the name their figures carry."""
    if smoke:
        resnet = ["model=resnet18", "data.num_classes=10", "data.batch_size=4"]
        return {
            "resnet": Workload(
                "sos_resnet50", resnet, image_batch(4, 32, 10, device), 4, "images",
                image_folder_layout,
            ),
            "transformer": Workload(
                "sos_transformer", ["model=transformer_tiny", "global_tokens=null"],
                token_batch(4, 8, 256, device), 4 * 8, "tokens", parallel_text_layout, 256,
            ),
        }  # fmt: skip
    return {
        "resnet50": Workload(
            "sos_resnet50", ["model.channels_last=true", "data.batch_size=256"],
            image_batch(256, 224, 1000, device), 256, "images", image_folder_layout,
        ),
        "transformer_base": Workload(
            "sos_transformer", ["global_tokens=null"], token_batch(128, 32, 32000, device),
            128 * 32, "tokens", parallel_text_layout, 32000,
        ),
    }  # fmt: skip


def measure(overrides: list[str], batch: Any, steps: int, warmup: int, run_dir: Path) -> float:
    """Median step time of one (model, method) run, built by train's ``assemble``."""
    cfg = compose_config(overrides)
    timer = StepTimer()
    run = assemble(cfg, run_dir, extra_callbacks=[timer])
    asked = cfg.data.get("vocab_size")
    if "vocab_size" in cfg.model and cfg.model.vocab_size != asked:
        raise SystemExit(
            f"bench/gpu.py: the model was sized to a {cfg.model.vocab_size}-piece vocabulary, "
            f"not data.vocab_size={asked}"
        )
    loader = DataLoader(Repeat(batch, warmup + steps), batch_size=None)
    run.trainer.fit(run.module, train_dataloaders=loader)
    times = timer.step_times(warmup)
    if len(times) != steps:
        raise SystemExit(f"bench/gpu.py: {len(times)} steps were timed, not --steps={steps}")
    return statistics.median(times)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=30)
    parser.add_argument("--warmup", type=positive_int, default=10)
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument(
        "--methods", nargs="+", default=DEFAULT_METHODS, choices=group_options("method")
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the code path")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    quiet_third_party()
    if args.smoke:
        device = "cpu"
        args.steps, args.warmup, args.rounds = 2, 1, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu.py: no CUDA device (use --smoke to check the code path)")
        device = "cuda"
        print(f"gpu: {torch.cuda.get_device_name()}")
    for name, work in workloads(args.smoke, device).items():
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            data_root = work.data_layout(Path(tmp) / "data", work.vocab_size)
            for round_ in range(args.rounds):
                for method in args.methods:
                    overrides = work.run_overrides(
                        method, data_root, args.warmup + args.steps, gpu=not args.smoke
                    )
                    run_dir = Path(tmp) / f"{method}-{round_}"
                    times[method].append(
                        measure(overrides, work.batch, args.steps, args.warmup, run_dir)
                    )
                    shutil.rmtree(run_dir)  # its init.pt: a model's weights per run
        dense = statistics.median(times["dense"]) if "dense" in times else None
        for method, values in times.items():
            step = statistics.median(values)
            print(f"{name}_{method}_{work.unit}_per_s: {work.items / step:.1f}")
            if dense is not None and method != "dense":
                print(f"{name}_{method}_throughput_over_dense: {dense / step:.3f}", flush=True)


if __name__ == "__main__":
    main()
