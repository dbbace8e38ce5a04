"""`sparse-train`: the Hydra entry point. Validate, instantiate, fit, test, write run outputs."""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from sparse_lightning.callbacks.rng_state import RngStateCheckpoint
from sparse_lightning.callbacks.sparsity_monitor import publish_results
from sparse_lightning.checkpoint_io import AtomicCheckpointIO
from sparse_lightning.errors import ConfigError
from sparse_lightning.launch import check_launcher
from sparse_lightning.layers import strip_reparameterisation as plain_parameters
from sparse_lightning.lottery import prepare_init
from sparse_lightning.masks import strip_masks
from sparse_lightning.outputs import (
    INIT_FILE,
    MASKS_FILE,
    RESULTS_FILE,
    read_results,
    save_torch,
    write_json,
)
from sparse_lightning.resume import CHECKPOINT_DIR, LAST_CHECKPOINT, plan_run, record_run

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def fraction_of(total: int, fraction: float) -> int:
    """Step counts as fractions of the budget (`${fraction_of:${trainer.max_steps},0.6}`);
    a positive fraction is at least one step, so short test runs keep a valid schedule."""
    steps = int(round(float(total) * float(fraction)))
    return max(steps, 1) if float(fraction) > 0 else steps


OmegaConf.register_new_resolver("fraction_of", fraction_of, replace=True)
# value * num / den, rounded when value is an int: lr and steps that follow the global batch
OmegaConf.register_new_resolver(
    "scale",
    lambda v, num, den=1: int(round(v * num / den)) if isinstance(v, int) else v * num / den,
    replace=True,
)
OmegaConf.register_new_resolver("unquote", lambda text: str(text).replace("'", ""), replace=True)

# Config groups whose option names are numbers (`sparsity=90`); Hydra's override grammar reads
# those as ints and refuses them as group choices, so the command line is quoted for it.
NUMERIC_GROUPS = ("sparsity",)
_NUMBERS = re.compile(r"[0-9.]+(,[0-9.]+)*")


def quote_numeric_choices(argv: list[str]) -> list[str]:
    """`sparsity=50,90` -> `sparsity='50','90'`, so numbered options work in runs and sweeps."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in NUMERIC_GROUPS and _NUMBERS.fullmatch(value):
            arg = key + sep + ",".join(f"'{v}'" for v in value.split(","))
        quoted.append(arg)
    return quoted


def build(cfg: DictConfig, name: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg[name]``; a ConfigError raised inside comes out as itself, not wrapped."""
    try:
        return instantiate(cfg[name], **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{name}: {cause}") from None
        raise


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[pl.Callback]:
    """The `callbacks` group is a dict of named entries; a null entry is switched off.

    Callbacks that only report to a logger are dropped when the run has none (`logger=none`).
    """
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not has_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def train(cfg: DictConfig) -> dict[str, Any]:
    """One run; returns the results that were written to ``results.json``."""
    check_launcher(cfg)
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    choices = hydra_cfg.runtime.choices
    overrides = list(hydra_cfg.overrides.task)
    plan = plan_run(run_dir, overrides, cfg.get("resume", "auto"), cfg.get("skip_finished", True))
    if plan.finished:
        print(f"sparse-train: {run_dir} already finished (skip_finished=false runs it again)")
        return read_results(run_dir)

    init = prepare_init(cfg)  # checks init.mask_from first; scratch-b rescales trainer.max_steps
    method: SparsityCallback = init.fixed_mask_callback() or build(cfg, "method")
    try:
        method.check_budget(cfg.trainer.max_steps)
    except ConfigError as error:
        raise ConfigError(f"method: {error}") from None
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg, "data")
    model = build(cfg, "model")
    module = build(cfg, "task", model=model)
    mask_set = method.attach(model)
    init.set_weights(model, mask_set, lambda: build(cfg, "model"))
    save_init(run_dir, model)
    rank_zero_only(record_run)(run_dir, overrides)

    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=[
            method,
            FiniteLossGuard(method.describe),
            RngStateCheckpoint(),
            *build_callbacks(cfg, bool(logger)),
            *init.callbacks(run_dir),
        ],
        logger=logger,
        plugins=[AtomicCheckpointIO()],
    )
    started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=plan.checkpoint)
    # The final state, whatever the checkpoint interval: export and resume read it.
    trainer.save_checkpoint(run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT)
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]

    results = {
        "method": choices.get("method"),
        "model": choices.get("model"),
        "data": choices.get("data"),
        "init": cfg.init.variant,
        "seed": cfg.seed,
        "target_sparsity": method.target_sparsity,
        "sparsity": mask_set.sparsity(),
        "layer_sparsity": mask_set.layer_sparsity(),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "steps": trainer.global_step,
        "seconds": time.time() - started,
        "parameters": sum(
            p.numel() for p in plain_parameters(dict(model.named_parameters())).values()
        ),
        "overrides": overrides,
        "resumed_from_step": plan.resumed_from_step,
        **init.results(mask_set),
    }
    write_outputs(run_dir, results, mask_set.masks())
    publish_results(logger, results)
    print_summary(run_dir, results)
    return results


@rank_zero_only
def save_init(run_dir: Path, model: Any) -> None:
    """The weights before the first optimiser step, for lottery tickets; never overwritten."""
    path = run_dir / INIT_FILE
    if not path.exists():
        save_torch(path, strip_masks(model.state_dict()))


@rank_zero_only
def write_outputs(run_dir: Path, results: dict[str, Any], masks: dict[str, Any]) -> None:
    save_torch(run_dir / MASKS_FILE, masks)
    write_json(run_dir / RESULTS_FILE, results)  # last: its presence means the run finished


@rank_zero_only
def print_summary(run_dir: Path, results: dict[str, Any]) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in results["metrics"].items())
    print(
        f"\n{results['method']} on {results['model']}/{results['data']}: "
        f"{results['parameters']:,} dense-equivalent parameters, "
        f"sparsity {results['sparsity']:.4f} (target {results['target_sparsity']:.2f}), "
        f"{metrics}; {results['steps']} steps in {results['seconds']:.0f} s\n"
        f"outputs: {run_dir} ({RESULTS_FILE}, {MASKS_FILE}, {INIT_FILE}, checkpoints/)"
    )


def _run(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except ConfigError as error:
        print(f"sparse-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as error:
        print(f"sparse-train: error: {error}", file=sys.stderr)
        sys.exit(1)


_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(_run)


def main() -> None:
    """Console script `sparse-train`."""
    sys.argv = [sys.argv[0], *quote_numeric_choices(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
