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

Section ``semi_structured`` (``--sections``; run first, it takes seconds): inference of
Transformer base's linear layers (d_model 512, ffn 2048: the attention projections 512 -> 512,
the feed-forward 512 -> 2048 and 2048 -> 512) on ``--tokens`` tokens (default 4096 and 32768),
in fp16 and bf16: dense ``F.linear`` against the same 2:4-pruned weight as
``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, or CUTLASS where torch has no
cuSPARSELt). Weights are pruned 2:4 along the input dimension (the 2 largest |w| of every 4
consecutive inputs kept); the dense weight is that pruned weight, so both compute the same
product, checked (max |sparse - dense| <= 3e-2 x max |dense|) before timing. Samples of 100
calls between synchronisations, dense and sparse interleaved, medians; prints
``semi_structured_<dtype>_<layer>_t<tokens>_{dense_us,sparse_us,speedup}`` (speedup = dense /
sparse). Eager calls: at 4096 tokens a call may be bound by launch and the sparse subclass's
Python dispatch rather than the kernel, which the 32768-token figures show less. A shape or
dtype the GPU has no kernel for prints ``<name>: failed (<error>)``; without CUDA one line
``semi_structured: skipped (no CUDA device)``.
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
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from sparse_lightning.config import compose_config, group_options
from sparse_lightning.data.toy import make_corpus, positive_int
from sparse_lightning.data.wmt import UNK_ID, ParallelTextDataModule
from sparse_lightning.models.transformer import EOS_ID, PAD_ID
from sparse_lightning.run.console import quiet_third_party
from sparse_lightning.train import assemble

DEFAULT_METHODS = ["dense", "magnitude", "variational_dropout", "l0"]
SECTIONS = ("semi_structured", "training")
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


# Transformer base's linear layers, (in_features, out_features), by the name their figures carry.
TRANSFORMER_BASE_LINEARS = {"attn_proj": (512, 512), "ffn_in": (512, 2048), "ffn_out": (2048, 512)}
SEMI_STRUCTURED_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SEMI_STRUCTURED_INNER = 100  # calls per timed sample (one call is tens of microseconds)
SEMI_STRUCTURED_RTOL = 3e-2  # of max |dense output|: a few bf16 ulps; a wrong layout is O(1)


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with the 2 smallest |w| of every 4 consecutive entries along the input (last)
    dimension set to zero: the 2:4 pattern the sparse tensor cores accelerate."""
    groups = weight.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.abs().topk(2, dim=1).indices, True)
    return (groups * keep).reshape(weight.shape)


def semi_structured(token_counts: list[int], repeats: int) -> None:
    """Dense against 2:4 semi-structured ``F.linear`` on Transformer base's layer shapes."""
    if not torch.cuda.is_available():
        print("semi_structured: skipped (no CUDA device)", flush=True)
        return
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    cusparselt = torch.backends.cusparselt.is_available()
    SparseSemiStructuredTensor._FORCE_CUTLASS = not cusparselt
    print(f"semi_structured_backend: {'cusparselt' if cusparselt else 'cutlass'}")
    generator = torch.Generator(device="cuda").manual_seed(0)
    for dtype_name, dtype in SEMI_STRUCTURED_DTYPES.items():
        like = {"device": "cuda", "dtype": dtype, "generator": generator}
        for layer, (fan_in, fan_out) in TRANSFORMER_BASE_LINEARS.items():
            weight = prune_2_4(torch.randn(fan_out, fan_in, **like) / fan_in**0.5)
            bias = torch.randn(fan_out, **like)
            for tokens in token_counts:
                name = f"semi_structured_{dtype_name}_{layer}_t{tokens}"
                x = torch.randn(tokens, fan_in, **like)
                try:
                    sparse_weight = to_sparse_semi_structured(weight)
                    with torch.inference_mode():
                        dense_out = F.linear(x, weight, bias).float()
                        sparse_out = F.linear(x, sparse_weight, bias).float()
                except (RuntimeError, NotImplementedError) as error:  # a kernel this GPU lacks
                    first_line = str(error).splitlines()[0] if str(error) else ""
                    print(f"{name}: failed ({type(error).__name__}: {first_line})", flush=True)
                    continue
                diff = float((sparse_out - dense_out).abs().max())
                if diff > SEMI_STRUCTURED_RTOL * float(dense_out.abs().max()):
                    raise SystemExit(f"bench/gpu.py: {name}: 2:4 output differs by {diff:.3g}")
                calls = {
                    "dense": lambda x=x, w=weight, b=bias: F.linear(x, w, b),
                    "sparse": lambda x=x, w=sparse_weight, b=bias: F.linear(x, w, b),
                }
                dense, sparse = interleaved_cuda_medians(calls, repeats).values()
                print(f"{name}_dense_us: {dense * 1e6:.2f}")
                print(f"{name}_sparse_us: {sparse * 1e6:.2f}")
                print(f"{name}_speedup: {dense / sparse:.3f}", flush=True)


def interleaved_cuda_medians(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call: samples of SEMI_STRUCTURED_INNER calls between two
    synchronisations, the variants interleaved (A B, B A, ...); round 0 warms up."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    order = list(calls)
    with torch.inference_mode():
        for r in range(repeats + 1):
            for variant in order if r % 2 == 0 else order[::-1]:
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(SEMI_STRUCTURED_INNER):
                    calls[variant]()
                torch.cuda.synchronize()
                if r > 0:
                    times[variant].append((time.perf_counter() - start) / SEMI_STRUCTURED_INNER)
    return {k: statistics.median(v) for k, v in times.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=30)
    parser.add_argument("--warmup", type=positive_int, default=10)
    parser.add_argument("--rounds", type=positive_int, default=2)
    parser.add_argument(
        "--methods", nargs="+", default=DEFAULT_METHODS, choices=group_options("method")
    )
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
        help="semi_structured: 2:4 inference of Transformer base's linear layers; training: "
        "throughput per method",
    )  # fmt: skip
    parser.add_argument(
        "--tokens", type=positive_int, nargs="+", default=[4096, 32768],
        help="semi_structured: tokens per batch (rows of the activation matrix)",
    )  # fmt: skip
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
    if "semi_structured" in args.sections:
        semi_structured(args.tokens, repeats=2 if args.smoke else 20)
    if "training" in args.sections:
        training(args, device)


def training(args: argparse.Namespace, device: str) -> None:
    """Training throughput per method, for each paper model."""
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
