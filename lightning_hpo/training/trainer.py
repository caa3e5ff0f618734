"""The Lightning Trainer for a run config: accelerator, devices and strategy, the user's
``trainer_config`` options, and stopping the rank processes a spawn-based strategy started."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from lightning_hpo.config.lightning_args import (
    accelerator_and_devices,
    outside_launcher,
    rank_count,
    trainer_errors,
)
from lightning_hpo.console import note_once
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.callbacks import DieWithParent

if TYPE_CHECKING:
    from lightning_hpo.config.run import RunConfig

# Strategies that start extra devices' processes by re-running the command line ("auto" picks
# "ddp" for several devices), and their spawn-based equivalents: see build_trainer.
_SPAWNED_EQUIVALENT = {
    "auto": "ddp_spawn",
    "ddp": "ddp_spawn",
    "ddp_find_unused_parameters_false": "ddp_spawn_find_unused_parameters_false",
    "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true",
}


class NoProfiler(PassThroughProfiler):
    """Lightning's default, no profiling, at less cost: Lightning wraps each of the some 30
    hooks it calls per training step in ``profiler.profile(name)``, which for its own
    pass-through profiler is a generator-based context manager; this one hands back one
    reused empty context. A ``profiler`` in ``trainer_config`` replaces it."""

    _nothing = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._nothing


def _relaunches_the_script(trainer: pl.Trainer) -> bool:
    """Whether ``trainer.fit`` would start the other ranks by re-running ``sys.argv`` (Lightning's
    ``ddp``): a second train.py or tune.py, not a training rank."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
        and launcher.num_processes * launcher.num_nodes > 1
    )


def build_trainer(
    cfg: RunConfig, *, progress: bool = False, checkpointing: bool = True, **kwargs: Any
) -> pl.Trainer:
    """A Trainer for ``cfg``'s device, devices and strategy, with its ``trainer_config``.

    ``kwargs`` (the caller's logger, callbacks, plugins, ...) and the run's length, progress
    bar and checkpointing override ``trainer_config``, which cannot name them anyway
    (``lightning_args.OWNED``); ``deterministic`` defaults to False.

    Several devices run as ``ddp_spawn``: Lightning's ``ddp`` (also what ``auto`` picks) starts
    the other ranks by re-running the command line, which here would start another training
    or tuning run instead of a rank.
    """
    accelerator, devices = accelerator_and_devices(cfg.device, cfg.devices)
    options = cfg.trainer_config
    if rank_count(cfg.device, cfg.devices) > 1:  # spawned ranks: never outlive this process
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), DieWithParent()]
    if SLURMEnvironment.detect() and outside_launcher() is None:
        # One process of a SLURM job (a lightning-hpo worker, train.py in an sbatch script):
        # it starts its run's ranks itself, where SLURM's environment would wait for srun to.
        kwargs["plugins"] = [*kwargs.get("plugins", ()), LightningEnvironment()]
    kwargs = (
        {
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "deterministic": False,
            "profiler": NoProfiler(),
        }
        | options
        | kwargs
        | {
            "max_epochs": cfg.epochs,
            "enable_progress_bar": progress,
            "enable_checkpointing": checkpointing,
        }
    )
    with trainer_errors(options):
        trainer = pl.Trainer(
            accelerator=accelerator, devices=devices, strategy=cfg.strategy, **kwargs
        )
    if not _relaunches_the_script(trainer):
        return trainer
    spawned = _SPAWNED_EQUIVALENT.get(cfg.strategy)
    if spawned is None:
        raise ConfigError(
            "<run config>",
            "strategy",
            f"{cfg.strategy!r} on several devices starts its processes by re-running the command line, which train.py and tune.py cannot do",
            "use strategy: ddp_spawn, or devices: 1",
        )
    if cfg.strategy != "auto":
        note_once(
            f"strategy {cfg.strategy!r} runs as {spawned!r}: {cfg.strategy!r} would re-run the command line for each extra device"
        )
    return pl.Trainer(accelerator=accelerator, devices=devices, strategy=spawned, **kwargs)


def stop_spawned_ranks(trainer: pl.Trainer, grace: float = 10.0) -> None:
    """Terminate the rank processes a spawn-based strategy started, if any are still alive."""
    procs = [p for p in getattr(trainer.strategy.launcher, "procs", None) or () if p.is_alive()]
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
