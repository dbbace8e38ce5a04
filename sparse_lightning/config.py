"""The Hydra configs shipped inside the package, and every OmegaConf resolver they use.

Resolvers are registered by one explicit call, ``register_resolvers()``, made by each entry
point (``sparse-train``'s ``main`` and its task function, which Hydra's launchers may run in
another process) and by ``compose_config``; importing a module registers nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent / "conf"
SHARED_PREFIX = "_"  # conf/<group>/_name.yaml: a part other options include, not an option


def group_options(group: str) -> list[str]:
    """The options of config group ``group`` (``method`` -> dense, l0, magnitude, ...), without
    the shared parts its options include through ``defaults`` (``method/_base.yaml``)."""
    return sorted(
        p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith(SHARED_PREFIX)
    )


def fraction_of(total: int, fraction: float) -> int:
    """Step counts as fractions of the budget (`${fraction_of:${trainer.max_steps},0.6}`);
    a positive fraction is at least one step, so short test runs keep a valid schedule."""
    steps = int(round(float(total) * float(fraction)))
    return max(steps, 1) if float(fraction) > 0 else steps


def scale(value: float, num: float, den: float = 1) -> float:
    """value * num / den, rounded when value is an int: lr and steps that follow the global batch
    (`${scale:${trainer.max_steps},2}`)."""
    if isinstance(value, int):
        return int(round(value * num / den))
    return value * num / den


def unquote(text: str) -> str:
    """A Hydra override string without its quotes, for folder and run names."""
    return str(text).replace("'", "")


def register_resolvers() -> None:
    """Register every resolver the configs use (idempotent)."""
    from sparse_lightning.data.token_batches import accumulation_steps
    from sparse_lightning.launch import run_name, sweep_name
    from sparse_lightning.run.identity import excluded_keys, without_init

    resolvers = {
        "fraction_of": fraction_of,
        "scale": scale,
        "accumulation": accumulation_steps,  # micro-batches per step for a global token batch
        "unquote": unquote,
        "without_init": without_init,
        "run_identity_excluded": excluded_keys,  # the keys that do not name a run
        "sweep_name": sweep_name,
        "run_name": run_name,
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The `sparse-train` config for ``overrides``, as Hydra composes it (for tools and tests)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)
