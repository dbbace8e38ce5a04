"""`sparse-train`: the Hydra entry point. Validate, instantiate, fit, test, write run outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from sparse_lightning.callbacks.base import SparsityCallback
from sparse_lightning.config import CONF_DIR, group_options, register_resolvers
from sparse_lightning.errors import ConfigError, UsageError, describe_bad_input, one_line
from sparse_lightning.init.variants import InitVariant, prepare_init
from sparse_lightning.launch import check_launcher
from sparse_lightning.layers import strip_reparameterisation as plain_parameters
from sparse_lightning.masks import strip_masks
from sparse_lightning.resume import plan_run, record_run
from sparse_lightning.run.checkpoint_io import AtomicCheckpointIO
from sparse_lightning.run.console import quiet_third_party
from sparse_lightning.run.finite_loss import FiniteLossGuard, NonFiniteLossError
from sparse_lightning.run.flops_meter import FlopsMeter
from sparse_lightning.run.folder import (
    INIT_FILE,
    MASKS_FILE,
    RESULTS_FILE,
    last_checkpoint,
    read_results,
    save_torch,
    write_results,
)
from sparse_lightning.run.monitor import publish_results
from sparse_lightning.run.results import RunResults
from sparse_lightning.run.rng_state import RngStateCheckpoint

log = logging.getLogger(__name__)


def build(cfg: DictConfig, name: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg[name]``; a ConfigError raised inside comes out as itself, not wrapped."""
    try:
        return instantiate(cfg[name], **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):  # raised in a nested part
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{name}: {cause}") from None
        raise


def fit_model_to_data(cfg: DictConfig, datamodule: Any) -> None:
    """Model settings only the prepared data knows (a trained tokenizer's real vocabulary size,
    ``datamodule.model_settings()``) replace the configured ones in ``cfg.model``, so the model,
    every rebuilt copy of it and the logged config agree with the data."""
    for key, value in getattr(datamodule, "model_settings", dict)().items():
        if key not in cfg.model:
            raise ConfigError(f"data sets model.{key}, which model={cfg.model._target_} lacks")
        cfg.model[key] = value


def config_error_in(error: BaseException) -> ConfigError | None:
    """The ConfigError a config resolver raised, which OmegaConf re-raises as its own error."""
    while error is not None and not isinstance(error, ConfigError):
        error = error.__context__
    return error


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[pl.Callback]:
    """The `callbacks` group is a dict of named entries; a null entry is switched off.

    Callbacks that only report to a logger are dropped when the run has none (`logger=none`).
    """
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not has_logger:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


@dataclass
class Run:
    """Everything one run trains with, built from its config by ``assemble``."""

    method: SparsityCallback
    init: InitVariant
    datamodule: pl.LightningDataModule
    model: nn.Module
    module: pl.LightningModule
    trainer: pl.Trainer
    logger: Any


def assemble(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[pl.Callback] = ()) -> Run:
    """Validate ``cfg`` and build the run: init variant, method, data, model, task module and
    Trainer with every callback the run needs; the starting weights are set and ``init.pt``
    written. Shared by ``train`` and the benchmarks, so both time the same setup."""
    check_launcher(cfg)
    OmegaConf.to_container(cfg.trainer, resolve=True)  # a derived value (global_tokens) fails now
    init = prepare_init(cfg)  # checks init.mask_from first; scratch-b rescales trainer.max_steps
    method: SparsityCallback = init.fixed_mask_callback() or build(cfg, "method")
    try:
        method.check_budget(cfg.trainer.max_steps)
    except ConfigError as error:
        raise ConfigError(f"method: {error}") from None
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg, "data")
    fit_model_to_data(cfg, datamodule)
    model = build(cfg, "model")
    module = build(cfg, "task", model=model)
    mask_set = method.attach(model)
    init.set_weights(model, mask_set, lambda: build(cfg, "model"))
    save_init(run_dir, model)

    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        callbacks=[
            method,
            FiniteLossGuard(method.describe),
            RngStateCheckpoint(),
            *build_callbacks(cfg, bool(logger)),
            *init.callbacks(run_dir),
            *extra_callbacks,
        ],
        logger=logger,
        plugins=[AtomicCheckpointIO()],
    )
    return Run(method, init, datamodule, model, module, trainer, logger)


def train(cfg: DictConfig) -> RunResults:
    """One run; returns the results that were written to ``results.json``."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    choices = hydra_cfg.runtime.choices
    overrides = list(hydra_cfg.overrides.task)
    plan = plan_run(run_dir, overrides, cfg.get("resume", "auto"), cfg.get("skip_finished", True))
    if plan.finished:
        print(f"sparse-train: {run_dir} already finished (skip_finished=false runs it again)")
        return read_results(run_dir)

    meter = FlopsMeter()
    run = assemble(cfg, run_dir, extra_callbacks=[meter])
    rank_zero_only(record_run)(run_dir, overrides)
    method, trainer, module, datamodule = run.method, run.trainer, run.module, run.datamodule
    mask_set = method.attach(run.model)
    started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=plan.checkpoint)
    # The final state, whatever the checkpoint interval: export and resume read it.
    trainer.save_checkpoint(last_checkpoint(run_dir))
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]

    results = RunResults(
        # what ran: a retrain init variant runs the fixed-mask callback instead of cfg.method
        method=method.method_name if run.init.replaces_method else choices.get("method"),
        model=choices.get("model"),
        data=choices.get("data"),
        init=run.init.record(mask_set),
        seed=cfg.seed,
        target_sparsity=method.target_sparsity,
        sparsity=mask_set.sparsity(),
        layer_sparsity=mask_set.layer_sparsity(),
        metrics={k: float(v) for k, v in metrics.items()},
        steps=trainer.global_step,
        seconds=time.time() - started,
        parameters=sum(
            p.numel() for p in plain_parameters(dict(run.model.named_parameters())).values()
        ),
        overrides=overrides,
        resumed_from_step=plan.resumed_from_step,
        method_details=method.record(),
        flops=meter.record(method, trainer.global_step),
    )
    write_outputs(run_dir, results, mask_set.masks())
    publish_results(run.logger, results.to_json())
    print_summary(run_dir, results)
    return results


@rank_zero_only
def save_init(run_dir: Path, model: Any) -> None:
    """The weights before the first optimiser step, for lottery tickets; never overwritten."""
    path = run_dir / INIT_FILE
    if not path.exists():
        save_torch(path, strip_masks(model.state_dict()))


@rank_zero_only
def write_outputs(run_dir: Path, results: RunResults, masks: dict[str, Any]) -> None:
    save_torch(run_dir / MASKS_FILE, masks)
    write_results(run_dir, results)  # last: its presence means the run finished


@rank_zero_only
def print_summary(run_dir: Path, results: RunResults) -> None:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in results.metrics.items())
    print(
        f"\n{results.method} on {results.model}/{results.data}: "
        f"{results.parameters:,} dense-equivalent parameters, "
        f"sparsity {results.sparsity:.4f} (target {results.target_sparsity:.2f}), "
        f"{metrics}; {results.steps} steps in {results.seconds:.0f} s\n"
        f"outputs: {run_dir} ({RESULTS_FILE}, {MASKS_FILE}, {INIT_FILE}, checkpoints/)"
    )


# Hydra prints its own multi-line report of a bad override and exits 1 unless HYDRA_FULL_ERROR=1,
# when it raises instead: `main` sets it, so every error reaches the handlers below, and keeps the
# user's own setting in USER_FULL_ERROR, which child processes (DDP, submitit) inherit.
FULL_ERROR = "HYDRA_FULL_ERROR"
USER_FULL_ERROR = "SPARSE_TRAIN_FULL_ERROR"


def full_errors() -> bool:
    """Whether the user asked for Hydra's full tracebacks (HYDRA_FULL_ERROR=1)."""
    return os.environ.get(USER_FULL_ERROR, os.environ.get(FULL_ERROR)) == "1"


def fail(message: str, status: int = 2) -> NoReturn:
    """Stop with one line on stderr: ``sparse-train: error: <message>``."""
    print(f"sparse-train: error: {one_line(message)}", file=sys.stderr)
    sys.exit(status)


def is_bad_input(error: BaseException) -> bool:
    """Hydra and OmegaConf errors about the config itself, and a constructor that refused a
    config value (ValueError, TypeError); any other error is a bug and keeps its traceback."""
    if isinstance(error, InstantiationException):
        return isinstance(error.__cause__, (ValueError, TypeError))
    return isinstance(error, (HydraException, OmegaConfBaseException))


def _run(cfg: DictConfig) -> None:
    register_resolvers()  # again: a launcher may run this in a fresh process
    quiet_third_party()
    try:
        train(cfg)
    except ConfigError as error:
        fail(str(error))
    except InterpolationResolutionError as error:
        cause = config_error_in(error)
        if cause is not None:
            fail(str(cause))
        if full_errors():
            raise
        fail(describe_bad_input(error))
    except NonFiniteLossError as error:
        fail(str(error), status=1)
    except (HydraException, OmegaConfBaseException) as error:
        if full_errors() or not is_bad_input(error):
            raise
        fail(describe_bad_input(error))


_hydra_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(_run)


def check_arguments(argv: list[str]) -> None:
    """Parse the command line as Hydra will, raising UsageError where argparse would print its
    usage text (``--version`` prints and exits as it does in Hydra)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str) -> NoReturn:
        raise UsageError(message)

    parser.error = error  # type: ignore[method-assign]
    args = parser.parse_args(argv)
    check_group_choices(args.overrides)


def check_group_choices(overrides: list[str]) -> None:
    """A config group's option is a name: ``sparsity=90`` (a number to Hydra's grammar) is
    refused with the options there are, instead of Hydra's type error."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        group = CONF_DIR / override.key_or_group
        if override.package is not None or not group.is_dir():
            continue
        value = override.value()
        if override.is_choice_sweep():
            values = list(value.list)
        elif override.is_sweep_override():
            continue  # range and interval sweeps
        else:
            values = value if isinstance(value, list) else [value]
        bad = [v for v in values if not isinstance(v, str)]
        if bad:
            options = ", ".join(group_options(override.key_or_group))
            raise UsageError(
                f"{override.key_or_group}={bad[0]} is not an option of "
                f"'{override.key_or_group}'; the options are {options}"
            )


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main() -> None:
    """Console script `sparse-train`.

    Every bad input (a malformed command line, an unknown config option or key, a value a check
    refuses) ends in one line ``sparse-train: error: ...`` on stderr and exit status 2, before
    training starts. HYDRA_FULL_ERROR=1 shows Hydra's and OmegaConf's errors with their
    traceback instead; any other error is a bug and always shows its full traceback.
    """
    quiet_third_party()
    register_resolvers()
    argv = sys.argv[1:]
    full = full_errors()
    with environment(**{FULL_ERROR: "1", USER_FULL_ERROR: "1" if full else "0"}):
        try:
            check_arguments(argv)
            _hydra_main()
        except ConfigError as error:
            fail(str(error))
        except (HydraException, OmegaConfBaseException) as error:
            if full:
                raise
            fail(describe_bad_input(error))


if __name__ == "__main__":
    main()
