"""Init variants: retrain the mask an earlier run found, from different starting weights.

Gale et al. (2019, sec. 5) ask whether a learned sparse structure is worth anything without the
weights that were trained with it. Every variant keeps the source run's masks fixed (no pruning
method runs) and changes only the starting weights and the budget:

- ``standard``: normal training (the model's own initialisation); optionally saves ``rewind.pt``.
- ``scratch_e`` / ``scratch_b`` (Liu et al. 2019): a fresh random initialisation (a seed
  different from the source's), the source's number of steps times ``budget_factor`` (1 for
  scratch-e, default 2 for scratch-b); the LR schedule, which interpolates ``trainer.max_steps``,
  stretches with it.
- ``lottery`` (Frankle & Carbin 2019): the source's ``init.pt``, or with ``rewind_step=k``
  (Frankle et al. 2019) its ``rewind.pt``, then masked.
- ``augmented``: a fresh initialisation whose masked layers are re-drawn with a variance scaled
  to their non-zeros (Gale et al. 2019, sec. 5.1): see ``sparse_glorot_limit`` (linear),
  ``sparse_embedding_std`` (embedding) and ``sparse_he_std`` (conv).

``prepare_init(cfg)`` checks ``cfg.init`` against its source run before anything is built;
the returned variant gives the fixed-mask callback (which replaces the configured method: a
retrain variant with an explicit ``method=`` override is refused), sets the weights after the
masks are attached, and fills the ``init`` record of ``results.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, open_dict
from torch import nn

from sparse_lightning.errors import ConfigError
from sparse_lightning.init.augmented import augmented_weight
from sparse_lightning.init.fixed_mask import FixedMask
from sparse_lightning.init.rewind import RewindCheckpoint
from sparse_lightning.masks import MaskSet, strip_masks
from sparse_lightning.run.folder import (
    INIT_FILE,
    MASKS_FILE,
    RESULTS_FILE,
    REWIND_FILE,
    read_init_state,
    read_masks,
    read_model_state,
    read_results,
    read_rewind,
)
from sparse_lightning.run.identity import override_key
from sparse_lightning.run.results import InitRecord

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]


def prepare_init(cfg: DictConfig, overrides: Sequence[str] | None = None) -> InitVariant:
    """Build ``cfg.init`` and check it against its source run before any work is done.

    ``overrides`` are the command line's (by default the running Hydra job's): a variant that
    replaces the method refuses an explicit ``method=`` among them. May rewrite
    ``cfg.trainer.max_steps`` (the source's steps times the budget factor); call it before the
    task module is instantiated so the LR schedule's ``T_max`` follows.
    """
    try:
        variant = instantiate(cfg.init)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise
    if overrides is None and HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
    if variant.replaces_method:
        chosen = [o for o in overrides or () if override_key(o) == "method"]
        if chosen:
            raise ConfigError(
                f"{chosen[0]} has no effect with init={variant.variant}, which retrains the "
                f"masks of init.mask_from with no pruning method; drop {chosen[0]}, or use "
                "init=standard"
            )
    variant.prepare(cfg)
    return variant


class InitVariant:
    """``standard``: the model's own initialisation and the configured method.

    ``save_rewind_step=k`` makes the run save its weights after step k as ``rewind.pt``, for a
    later ``init=lottery init.rewind_step=k``. ``weights_from`` starts from a sparse model
    instead (a Lightning checkpoint or an exported ``model.pt``): fine-tuning, or another method
    from a pruned model; ``keep_mask=true`` makes its zeros the starting masks.
    """

    replaces_method = False  # True: fixed_mask_callback() runs instead of cfg.method

    def __init__(
        self,
        variant: str = "standard",
        save_rewind_step: int | None = None,
        weights_from: str | None = None,
        keep_mask: bool = False,
    ) -> None:
        self.variant = variant
        self.save_rewind_step = None if save_rewind_step is None else int(save_rewind_step)
        self.weights_from = None if weights_from is None else to_absolute_path(str(weights_from))
        self.keep_mask = bool(keep_mask)
        if self.keep_mask and self.weights_from is None:
            raise ConfigError(
                "init.keep_mask=true needs init.weights_from=<checkpoint or model.pt>"
            )
        self.start_state: State | None = None

    def prepare(self, cfg: DictConfig) -> None:
        """Validate against the rest of the config; may change the step budget."""
        k, max_steps = self.save_rewind_step, cfg.trainer.max_steps
        if k is not None and not 1 <= k <= max_steps:
            raise ConfigError(
                f"init.save_rewind_step={k} is not a training step: allowed 1..{max_steps} "
                f"(trainer.max_steps)"
            )
        if self.weights_from is not None:
            name = f"init.weights_from={self.weights_from}"
            self.start_state = read_model_state(Path(self.weights_from), name)

    def fixed_mask_callback(self) -> FixedMask | None:
        """The callback that replaces the configured method, or None to keep the method."""
        return None

    def set_weights(
        self, model: nn.Module, mask_set: MaskSet, build_model: Callable[[], nn.Module]
    ) -> None:
        """Set the starting weights after the masks are attached (standard: leave them)."""
        if self.start_state is None:
            return
        check_same_model(model, self.start_state, f"init.weights_from={self.weights_from}")
        load_weights(model, self.start_state)
        if self.keep_mask:
            mask_set.set_masks({n: self.start_state[n] != 0 for n in mask_set.names})

    def callbacks(self, run_dir: Path) -> list[pl.Callback]:
        return (
            []
            if self.save_rewind_step is None
            else [RewindCheckpoint(self.save_rewind_step, run_dir)]
        )

    def record(self, mask_set: MaskSet) -> InitRecord:
        """The ``init`` record of ``results.json``."""
        return InitRecord(
            variant=self.variant,
            save_rewind_step=self.save_rewind_step,
            weights_from=self.weights_from,
            keep_mask=self.keep_mask,
        )


class SourceRun:
    """A finished ``sparse-train`` run folder: its ``results.json`` and ``masks.pt``."""

    def __init__(self, path: str | Path | None, variant: str) -> None:
        if path is None or str(path).strip() == "":
            raise ConfigError(
                f"init={variant} needs init.mask_from=<folder of an earlier sparse-train run>"
            )
        self.path = Path(to_absolute_path(str(path)))
        self.name = f"init.mask_from={path}"
        if not self.path.is_dir():
            raise ConfigError(f"{self.name} does not exist or is not a folder")
        missing = [f for f in (RESULTS_FILE, MASKS_FILE) if not (self.path / f).is_file()]
        if missing:
            raise ConfigError(
                f"{self.name} is not a finished sparse-train run folder (no {', '.join(missing)})"
            )
        try:
            self.results = read_results(self.path)
        except ValueError as error:
            raise ConfigError(f"{self.name}: {RESULTS_FILE} is {error}") from None
        self.masks = read_masks(self.path)

    def rerun_command(self, *extra: str) -> str:
        overrides = [o for o in self.results.overrides if not o.startswith("init.save")]
        return " ".join(["sparse-train", *overrides, f"hydra.run.dir={self.path}", *extra])

    def init_state(self) -> State:
        path = self.path / INIT_FILE
        if not path.is_file():
            raise ConfigError(
                f"{self.name} has no {INIT_FILE}; re-run the source run: {self.rerun_command()}"
            )
        return read_init_state(self.path)


class RetrainMask(InitVariant):
    """Base of the variants that retrain the source run's fixed masks for its number of steps."""

    budget_factor = 1.0
    replaces_method = True

    def __init__(self, variant: str, mask_from: str | None = None) -> None:
        super().__init__(variant)
        self.mask_from = mask_from
        self.source: SourceRun | None = None
        self.seed = 0

    def prepare(self, cfg: DictConfig) -> None:
        self.source = SourceRun(self.mask_from, self.variant)
        self.seed = int(cfg.seed)
        source_steps = int(self.source.results.steps)
        steps = max(1, round(self.budget_factor * source_steps))
        if steps != cfg.trainer.max_steps:
            log.info(
                "init=%s: trainer.max_steps %s -> %d (%g x the source's %d steps)",
                self.variant,
                cfg.trainer.max_steps,
                steps,
                self.budget_factor,
                source_steps,
            )
        with open_dict(cfg):
            cfg.trainer.max_steps = steps

    def fixed_mask_callback(self) -> FixedMask:
        assert self.source is not None
        return FixedMask(self.source.masks, self.source.results.target_sparsity, self.source.name)

    def set_weights(
        self, model: nn.Module, mask_set: MaskSet, build_model: Callable[[], nn.Module]
    ) -> None:
        assert self.source is not None
        if (self.source.path / INIT_FILE).is_file():
            check_same_model(model, self.source.init_state(), self.source.name)
        load_weights(model, self.starting_weights(model, mask_set, build_model))
        mask_set.apply_()

    def starting_weights(
        self, model: nn.Module, mask_set: MaskSet, build_model: Callable[[], nn.Module]
    ) -> State:
        raise NotImplementedError

    def record(self, mask_set: MaskSet) -> InitRecord:
        assert self.source is not None
        source = self.source.results
        final = mask_set.masks()
        same = final.keys() == self.source.masks.keys() and all(
            torch.equal(final[n], self.source.masks[n]) for n in final
        )
        sparsity = mask_set.sparsity()
        if not same or abs(sparsity - source.sparsity) > 1e-9:
            log.error(
                "masks differ from %s: sparsity %.6f vs %.6f",
                self.source.name,
                sparsity,
                source.sparsity,
            )
        return InitRecord(
            variant=self.variant,
            mask_from=str(self.source.path),
            budget_factor=self.budget_factor,
            source_method=source.method,
            source_sparsity=source.sparsity,
            source_steps=source.steps,
            source_metrics=dict(source.metrics),
            masks_equal_source=same,
        )


class ScratchInit(RetrainMask):
    """scratch-e (``budget_factor=1``) / scratch-b: fresh weights from a seed unlike the source's.

    The fresh seed is ``source seed + 1 + seed`` (never the source's for seeds >= 0, different
    for each replicate); the global RNG is untouched, so data order follows ``seed`` as usual.
    """

    def __init__(
        self, variant: str, mask_from: str | None = None, budget_factor: float = 1.0
    ) -> None:
        super().__init__(variant, mask_from)
        factor = float(budget_factor)
        if not (math.isfinite(factor) and factor > 0):
            raise ConfigError(f"init.budget_factor={budget_factor} must be a number > 0")
        self.budget_factor = factor

    @property
    def init_seed(self) -> int:
        assert self.source is not None
        return int(self.source.results.seed) + 1 + self.seed

    def starting_weights(
        self, model: nn.Module, mask_set: MaskSet, build_model: Callable[[], nn.Module]
    ) -> State:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            return strip_masks(build_model().state_dict())

    def record(self, mask_set: MaskSet) -> InitRecord:
        record = super().record(mask_set)
        record.init_seed = self.init_seed
        return record


class LotteryInit(RetrainMask):
    """The source's own starting weights (``init.pt``), or its weights after step
    ``rewind_step`` (``rewind.pt``), bit for bit on the kept entries.

    Training then runs the source's full number of steps on a fresh LR schedule in both cases
    (open_lth's rewinding trains only the remaining T - k steps from step k's schedule).
    """

    def __init__(
        self, variant: str, mask_from: str | None = None, rewind_step: int | None = None
    ) -> None:
        super().__init__(variant, mask_from)
        self.rewind_step = int(rewind_step) if rewind_step else None
        if self.rewind_step is not None and self.rewind_step < 0:
            raise ConfigError(f"init.rewind_step={rewind_step} must be >= 0 (0: init.pt)")
        self._state: State | None = None

    def prepare(self, cfg: DictConfig) -> None:
        super().prepare(cfg)
        assert self.source is not None
        k = self.rewind_step
        if k is None:
            self._state = self.source.init_state()
            return
        path = self.source.path / REWIND_FILE
        rerun = self.source.rerun_command(f"init.save_rewind_step={k}")
        if not path.is_file():
            raise ConfigError(
                f"init.rewind_step={k}: {self.source.name} has no {REWIND_FILE}; re-run it: {rerun}"
            )
        saved_step, self._state = read_rewind(self.source.path)
        if saved_step != k:
            raise ConfigError(
                f"init.rewind_step={k}: {self.source.name} saved {REWIND_FILE} at step "
                f"{saved_step}; use init.rewind_step={saved_step} or re-run it: {rerun}"
            )

    def starting_weights(
        self, model: nn.Module, mask_set: MaskSet, build_model: Callable[[], nn.Module]
    ) -> State:
        assert self._state is not None
        check_same_model(model, self._state, self.source.name if self.source else "source")
        return self._state

    def record(self, mask_set: MaskSet) -> InitRecord:
        record = super().record(mask_set)
        record.rewind_step = self.rewind_step
        return record


class AugmentedInit(ScratchInit):
    """A fresh initialisation whose masked layers are re-drawn with variance scaled to their
    non-zeros: sparse Glorot uniform for linear, sparse normal for embeddings, sparse He normal
    for conv."""

    def starting_weights(
        self, model: nn.Module, mask_set: MaskSet, build_model: Callable[[], nn.Module]
    ) -> State:
        state = super().starting_weights(model, mask_set, build_model)
        generator = torch.Generator().manual_seed(self.init_seed)
        for entry in mask_set.entries:
            state[entry.name] = augmented_weight(entry.module, entry.attr, entry.mask, generator)
        return state


def check_same_model(model: nn.Module, reference: State, source: str) -> None:
    """ConfigError naming the first parameter or buffer whose name or shape differs."""
    here = {k: tuple(v.shape) for k, v in strip_masks(model.state_dict()).items()}
    for name, tensor in reference.items():
        if name not in here:
            raise ConfigError(
                f"{source} is from a different model: its '{name}' is not in this model"
            )
        if here[name] != tuple(tensor.shape):
            raise ConfigError(
                f"{source} is from a different model: '{name}' has shape "
                f"{tuple(tensor.shape)} there and {here[name]} here"
            )
    extra = [name for name in here if name not in reference]
    if extra:
        raise ConfigError(
            f"{source} is from a different model: this model's '{extra[0]}' is not in it"
        )


def load_weights(model: nn.Module, state: State) -> None:
    """Copy ``state`` (no mask buffers) into ``model``, whose mask buffers stay as they are."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_mask")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"starting weights do not fit the model: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
