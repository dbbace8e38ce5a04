"""One rule for a run's identity: which command-line overrides name it.

The same overrides name a sweep's run folder (``hydra.job.override_dirname``, whose
``exclude_keys`` come from ``excluded_keys()`` through the ``run_identity_excluded`` resolver),
are recorded in ``run.json`` (a later run into that folder must have the same ones) and name the
W&B run. Overrides that change where outputs go, how they are logged or whether an existing
folder is reused, and not the result, are left out; so is the name of a preset (its settings are
what matter, and its sweep folder already says it) and ``init.mask_from`` (a folder path: stage 2
finds it from the other overrides, see ``without_init``).

Keys are compared as Hydra compares them for ``exclude_keys``: the key (or group) alone, without
``+``/``~`` prefixes or an ``@package``, exactly (``logger=wandb`` is ignored, ``logger.project=x``
is not).
"""

from __future__ import annotations

from collections.abc import Iterable

EXCLUDED_KEYS: tuple[str, ...] = (
    "hydra.run.dir",
    "hydra.sweep.dir",
    "hydra.sweep.subdir",
    "logger",
    "resume",
    "skip_finished",
    "experiment",
    "stage1_dir",
    "init.save_rewind_step",  # saving rewind.pt changes nothing else; re-running adds it
    "init.mask_from",
)
ITEM_SEP = ","
KV_SEP = "="


def excluded_keys() -> list[str]:
    """The keys that do not name a run (the ``run_identity_excluded`` resolver)."""
    return list(EXCLUDED_KEYS)


def override_key(override: str) -> str:
    """The key or group of a command-line override: ``+a.b@pkg=1`` -> ``a.b``."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


def names_run(override: str) -> bool:
    key = override_key(override)
    return key not in EXCLUDED_KEYS and not key.startswith(("hydra.", "hydra/"))


def identity_overrides(overrides: Iterable[str]) -> list[str]:
    """The overrides that name the run, sorted as Hydra sorts them (what run.json records)."""
    return sorted(str(o) for o in overrides if names_run(str(o)))


def run_key(overrides: Iterable[str]) -> str:
    """The run's name, as its sweep folder is named: the identity overrides joined by ``,``,
    without quotes (``method=magnitude,sparsity=s90``); ``""`` for none."""
    return ITEM_SEP.join(identity_overrides(overrides)).replace("'", "")


def without_init(override_dirname: str, item_sep: str = ITEM_SEP) -> str:
    """A run name (``hydra.job.override_dirname``) less its ``init=``/``init.*=`` items and
    quotes: the name the same run without the init overrides had (conf/experiment/
    lottery_stage2.yaml finds its stage-1 folder with it)."""
    items = [i for i in override_dirname.split(item_sep) if not i.startswith(("init=", "init."))]
    return item_sep.join(items).replace("'", "")
