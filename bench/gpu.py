"""Training throughput of the paper's models on one GPU, per sparsity method, bf16 autocast.

    python bench/gpu.py [--steps 30] [--rounds 2] [--methods dense magnitude ...]
    python bench/gpu.py --smoke       # the same code path on CPU with toy sizes (a check)

ResNet-50 images/s (global batch 256 at 224x224, channels_last) and Transformer base tokens/s
(128 pairs of 32 target tokens), built exactly as ``sparse-train experiment=sos_resnet50|
sos_transformer trainer=gpu method=<m> sparsity=s90`` builds them (model, task module, method
callback, Lightning Trainer), on synthetic batches already on the GPU. MP is measured in its
steady state (masks at 90 % from step 1, applied after every optimiser step). Methods run
interleaved (round 1: all methods, round 2: all methods, ...); step times are synchronised
medians after ``--warmup`` steps. Prints ``name: value`` lines, including each method's
throughput over dense (target for MP: >= 0.98).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, IterableDataset

from sparse_lightning.config import CONF_DIR

# the presets' MP schedule keys that other methods do not take
DROP = {
    "dense": ["begin_step", "end_step", "frequency"],
    "variational_dropout": ["frequency"],
    "l0": ["frequency"],
}
STEADY_MP = ["method.begin_step=0", "method.end_step=1", "method.frequency=1"]


class Repeat(IterableDataset):
    """The same ready batch, ``n`` times (no input pipeline in the measurement)."""

    def __init__(self, batch: Any, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


class StepTimer(pl.Callback):
    """Wall time of each training step, synchronised with the device."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *a) -> None:
        self._sync(pl_module)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *a) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self.start)


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


def run_one(overrides: list[str], batch: Any, steps: int, warmup: int, accelerator: str) -> float:
    """Median step time of one (model, method) training run through the real components."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides)
    method = instantiate(cfg.method)
    pl.seed_everything(0)
    model = instantiate(cfg.model)
    module = instantiate(cfg.task, model=model)
    method.attach(model)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision="bf16-mixed" if accelerator == "gpu" else "32-true",
        max_steps=warmup + steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[method, timer],
    )
    loader = DataLoader(Repeat(batch, warmup + steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return statistics.median(timer.times[warmup:])


def method_overrides(method: str) -> list[str]:
    extra = [f"~method.{key}" for key in DROP.get(method, [])]
    return [
        f"method={method}",
        "sparsity=s90",
        *extra,
        *(STEADY_MP if method == "magnitude" else []),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--methods", nargs="+", default=["dense", "magnitude", "variational_dropout", "l0"]
    )
    parser.add_argument("--smoke", action="store_true", help="CPU, toy sizes: checks the code path")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    if args.smoke:
        accelerator, device = "cpu", "cpu"
        args.steps, args.warmup, args.rounds = 2, 1, 1
        models = {
            "resnet": ("sos_resnet50",
                       ["model=resnet18", "data.num_classes=10", "data.batch_size=4"],
                       image_batch(4, 32, 10, device), 4, "images"),
            "transformer": ("sos_transformer", ["model=transformer_tiny", "data.vocab_size=256"],
                            token_batch(4, 8, 256, device), 4 * 8, "tokens"),
        }  # fmt: skip
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu.py: no CUDA device (use --smoke to check the code path)")
        accelerator, device = "gpu", "cuda"
        print(f"gpu: {torch.cuda.get_device_name()}")
        models = {
            "resnet50": ("sos_resnet50", ["model.channels_last=true", "data.batch_size=256"],
                         image_batch(256, 224, 1000, device), 256, "images"),
            "transformer_base": ("sos_transformer", [],
                                 token_batch(128, 32, 32000, device), 128 * 32, "tokens"),
        }  # fmt: skip
    for name, (preset, model_overrides, batch, items, unit) in models.items():
        base = [f"experiment={preset}", "data.root=/unused", "logger=none", *model_overrides]
        times: dict[str, list[float]] = {m: [] for m in args.methods}
        for _ in range(args.rounds):
            for method in args.methods:
                overrides = [*base, *method_overrides(method),
                             f"trainer.max_steps={args.warmup + args.steps}"]  # fmt: skip
                times[method].append(
                    run_one(overrides, batch, args.steps, args.warmup, accelerator)
                )
        dense = statistics.median(times["dense"]) if "dense" in times else None
        for method, values in times.items():
            step = statistics.median(values)
            print(f"{name}_{method}_{unit}_per_s: {items / step:.1f}")
            if dense is not None and method != "dense":
                print(f"{name}_{method}_throughput_over_dense: {dense / step:.3f}", flush=True)


if __name__ == "__main__":
    main()
