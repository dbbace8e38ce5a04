"""Which Hydra launcher can run which Lightning strategy, checked before any training starts.

Measured with hydra-core 1.3.8, hydra-joblib-launcher 1.2.0, hydra-submitit-launcher 1.2.0 and
Lightning 2.6.6: joblib + `ddp` or `ddp_spawn` fails (Lightning re-executes the loky
worker's argv); submitit_local + `ddp` fails on the replayed Hydra overrides while `ddp_spawn`
works; the basic launcher (and a single run) + `ddp` works by replaying the command line in each
child. On SLURM the standard path is submitit with one task per device, so Lightning's SLURM
environment starts no processes of its own. Anything else with more than one process is refused
at once, with a message naming a combination that works.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sparse_lightning.errors import ConfigError
from sparse_lightning.run.identity import run_key

# Launcher `_target_` -> short name used in messages.
LAUNCHERS = {
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher": "basic",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": "joblib",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher": "submitit_local",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher": "slurm",
}
# How a Lightning strategy starts its processes: "popen" re-executes sys.argv (the default of
# ddp, fsdp, deepspeed), "spawn"/"fork" start children from the running Python process.
SPAWNING = {"ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}
SUPPORTED = {
    "basic": ("popen", "spawn", "fork"),
    "joblib": (),
    "submitit_local": ("spawn",),
    "slurm": ("popen",),
}
ADVICE = {
    "joblib": (
        "joblib runs each run in a loky worker where Lightning cannot start its processes; "
        "use hydra/launcher=parallel (joblib) with a one-process trainer (trainer=default), "
        "or the basic launcher (no hydra/launcher override) with trainer=ddp"
    ),
    "submitit_local": (
        "use hydra/launcher=slurm_local (submitit_local) with trainer=ddp "
        "trainer.strategy=ddp_spawn, or the basic launcher with trainer=ddp"
    ),
    "slurm": (
        "use hydra/launcher=slurm with trainer=ddp (strategy ddp), one task per device: "
        "hydra.launcher.tasks_per_node=<trainer.devices> hydra.launcher.nodes=<trainer.num_nodes>"
    ),
    "other": "use the basic launcher (the default) or hydra/launcher=slurm with trainer=ddp",
}


@dataclass(frozen=True)
class ProcessPlan:
    """How many processes a trainer config starts, and how (see SPAWNING)."""

    strategy: str
    start: str
    devices: int | None  # per node; None = decided at run time ("auto" on an accelerator)
    num_nodes: int

    @property
    def multi_process(self) -> bool:
        return self.devices is None or self.devices * self.num_nodes > 1


def process_plan(trainer: Any) -> ProcessPlan:
    """Read strategy, devices and num_nodes from a trainer config (strings or `_target_`s)."""
    trainer = trainer or {}
    strategy = trainer.get("strategy", "auto")
    start = "popen"
    if isinstance(strategy, (dict, DictConfig)):
        name = str(strategy.get("_target_", "custom")).rsplit(".", 1)[-1]
        start = str(strategy.get("start_method", "popen"))
        strategy = name
    strategy = str(strategy)
    start = SPAWNING.get(strategy.split("_find_unused")[0], start)
    devices = _count_devices(trainer.get("devices", "auto"), str(trainer.get("accelerator", "")))
    num_nodes = int(trainer.get("num_nodes", 1) or 1)
    if strategy in ("single_device", "SingleDeviceStrategy"):
        devices, num_nodes = 1, 1
    return ProcessPlan(strategy, start, devices, num_nodes)


def _count_devices(devices: Any, accelerator: str) -> int | None:
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in ("auto", None, -1, "-1"):
        return 1 if accelerator == "cpu" and devices in ("auto", None) else None
    return int(devices)


def launcher_name(hydra_cfg: Any) -> str:
    """Short name of the launcher that runs this job; a single run (no `-m`) is "basic"."""
    if str(hydra_cfg.get("mode", "")) in ("RUN", "RunMode.RUN"):
        return "basic"
    target = str((hydra_cfg.get("launcher") or {}).get("_target_", ""))
    return LAUNCHERS.get(target, target or "basic")


def check_launcher(cfg: DictConfig, hydra_cfg: Any = None) -> None:
    """Raise ConfigError if the launcher cannot run the trainer's strategy (see module doc).

    ``hydra_cfg`` is the `hydra` node; by default the running job's own (HydraConfig).
    """
    if hydra_cfg is None:
        if not HydraConfig.initialized():
            return
        hydra_cfg = HydraConfig.get()
    plan = process_plan(cfg.get("trainer"))
    launcher = launcher_name(hydra_cfg)
    if launcher == "slurm":
        _check_slurm(plan, hydra_cfg.launcher)
        return
    if not plan.multi_process:
        return
    allowed = SUPPORTED.get(launcher)
    if allowed is not None and plan.start in allowed:
        return
    known = launcher if allowed is not None else f"'{launcher}' (untested)"
    raise ConfigError(
        f"launcher {known} cannot run trainer.strategy={plan.strategy} with "
        f"{_describe(plan)}; {ADVICE.get(launcher, ADVICE['other'])}"
    )


def _check_slurm(plan: ProcessPlan, launcher: Any) -> None:
    tasks = int(launcher.get("tasks_per_node", 1) or 1)
    nodes = int(launcher.get("nodes", 1) or 1)
    gpus = launcher.get("gpus_per_node")
    devices = plan.devices if plan.multi_process else 1
    if devices is None:
        devices = int(gpus or tasks)  # "auto" devices: every GPU SLURM gives the job
    if plan.multi_process and plan.start != "popen":
        raise ConfigError(
            f"launcher slurm cannot run trainer.strategy={plan.strategy}: SLURM starts the "
            f"processes itself; {ADVICE['slurm']}"
        )
    if devices != tasks or plan.num_nodes != nodes or (gpus and int(gpus) != devices):
        raise ConfigError(
            f"launcher slurm starts {tasks} task(s) per node with gpus_per_node={gpus} on "
            f"{nodes} node(s) but the trainer "
            f"expects {_describe(plan)}; {ADVICE['slurm']}"
        )


def _describe(plan: ProcessPlan) -> str:
    devices = "trainer.devices=auto" if plan.devices is None else f"devices={plan.devices}"
    return f"{devices} x num_nodes={plan.num_nodes}"


class LauncherCheck(Callback):
    """Hydra callback: the same check on the sweep's base config, before any job is launched,
    so a bad combination fails once with one line instead of once per run."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_launcher(config, config.hydra)
        except ConfigError as error:
            print(f"sparse-train: error: {error}", file=sys.stderr)
            sys.exit(2)


def sweep_name() -> str | None:
    """The sweep's folder (`multirun/<date>/<time>`) in a multirun; None for a single run."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if str(hydra_cfg.mode) in ("RUN", "RunMode.RUN"):
        return None
    return str(hydra_cfg.sweep.dir)


def run_name() -> str | None:
    """The run's name (`method=magnitude,sparsity=s90`), as its sweep folder is named
    (run/identity.py); None for a run without overrides."""
    if not HydraConfig.initialized():
        return None
    return run_key(HydraConfig.get().overrides.task) or None
