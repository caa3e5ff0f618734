"""A seed's callbacks and loggers from its run config's ``callbacks`` and ``loggers`` entries
(``config.class_paths``): fresh instances for every Trainer; TensorBoard when no logger is
listed. Each logger writes one seed's run (or a fused run's mean) into its run folder unless
its ``init_args`` say otherwise (``class_paths.logger_defaults``)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from lightning_hpo.config.class_paths import (
    CALLBACKS,
    CLASS_PATH,
    INIT_ARGS,
    LOGGERS,
    logger_defaults,
    make,
)
from lightning_hpo.config.imports import resolve
from lightning_hpo.config.run import RunConfig


def run_callbacks(cfg: RunConfig) -> list[Callback]:
    """New instances of the config's callbacks, in their order."""
    return [
        make(resolve(e[CLASS_PATH]), e[INIT_ARGS], {}, "<run config>", f"{CALLBACKS}[{i}]")
        for i, e in enumerate(cfg.callbacks)
    ]


def run_loggers(cfg: RunConfig, run_dir: Path) -> list[Logger]:
    """The loggers of the run written to ``run_dir`` (a seed's folder, or a fused run's
    ``mean``): the config's, else TensorBoard's run ``<group>/<seed>``."""
    entries = cfg.loggers or [{CLASS_PATH: f"{TensorBoardLogger.__module__}.TensorBoardLogger"}]
    loggers = []
    for index, entry in enumerate(entries):
        cls = resolve(entry[CLASS_PATH])
        init_args = entry.get(INIT_ARGS, {})
        defaults = logger_defaults(cls, Path(run_dir), cfg.project, init_args)
        loggers.append(make(cls, init_args, defaults, "<run config>", f"{LOGGERS}[{index}]"))
    return loggers


def end_runs(loggers: list[Logger]) -> None:
    """End what a Trainer's loggers leave open when its fit is over: the process's W&B run
    (Lightning's ``WandbLogger`` leaves it to the caller), so the next seed's logger starts
    its own rather than reusing it."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
