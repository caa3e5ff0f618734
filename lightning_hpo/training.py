"""Single training runs: one Lightning Trainer per seed, logged to TensorBoard, checkpointed.

``fit_seed`` is the one place a Trainer is built; ``train`` (train.py) and the tuner's
objective both call it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from lightning_hpo.config import RunConfig
from lightning_hpo.data import build_datamodule, feature_sizes
from lightning_hpo.errors import ConfigError
from lightning_hpo.imports import accepted_kwargs, resolve
from lightning_hpo.metrics import LOGGED_METRICS
from lightning_hpo.module import RegressionModule
from lightning_hpo.yamlio import dump_yaml

RESULT_FILE = "result.json"
# The key under which RunRecorder hands the history back from spawned DDP ranks (see below).
HISTORY_KEY = "lightning_hpo/history"
# Strategies that start extra devices' processes by re-running the command line ("auto" picks
# "ddp" for several devices), and their spawn-based equivalents: see build_trainer.
_SPAWNED_EQUIVALENT = {
    "auto": "ddp_spawn",
    "ddp": "ddp_spawn",
    "ddp_find_unused_parameters_false": "ddp_spawn_find_unused_parameters_false",
    "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true",
}
_quiet = False  # set by quiet_lightning(); spawned DDP ranks inherit it through RunRecorder
_noted: set[str] = set()


@dataclass
class SeedResult:
    """What one seed's run ended with. ``history`` is the monitored metric per epoch."""

    seed: int
    run_dir: Path
    history: list[float] = field(default_factory=list)
    mode: str = "min"
    seconds: float = 0.0

    @property
    def final(self) -> float:
        return self.history[-1] if self.history else math.nan

    @property
    def best(self) -> float:
        finite = [v for v in self.history if math.isfinite(v)]
        if not finite:
            return math.nan
        return min(finite) if self.mode == "min" else max(finite)

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "history": self.history, "mode": self.mode, "seconds": self.seconds}


@dataclass
class TrainResult:
    results: list[SeedResult]
    monitor: str

    @property
    def finals(self) -> list[float]:
        return [r.final for r in self.results]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals)

    @property
    def std(self) -> float:
        return statistics.stdev(self.finals) if len(self.finals) > 1 else 0.0


class RunRecorder(Callback):
    """Records the monitored metric after each real validation and logs hparams at the end.

    The sanity check is never recorded. A metric that is never logged fails fast,
    listing the ones that are. The hyperparameters go to TensorBoard with the final
    and best metric however training ends (finished, early-stopped, pruned or
    interrupted), before Lightning closes the logger.

    Under a spawn-based strategy (ddp_spawn) the ranks train in other processes, on
    copies of this callback: at the end of training the history is put into
    ``trainer.callback_metrics``, which Lightning carries back to the main process,
    where ``fit_seed`` reads it. The copies also apply ``quiet_lightning`` when the
    main process did.
    """

    def __init__(self, result: SeedResult, monitor: str, hparams: dict[str, Any]):
        self.result, self.monitor, self.hparams = result, monitor, hparams

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_quiet": _quiet}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if state.pop("_quiet", False):
            quiet_lightning()  # unpickled in a spawned rank, before it logs anything
        self.__dict__.update(state)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking:
            return
        if self.monitor not in metrics:
            if self.monitor.startswith("val") or trainer.current_epoch > 0:
                logged = sorted(set(metrics) | set(LOGGED_METRICS))
                raise ConfigError("metric", self.monitor, "is never logged by the LightningModule", f"use one of: {', '.join(logged)}")
            return
        self.result.history.append(float(metrics[self.monitor]))

    # The history rides in every checkpoint, so a resumed run's result covers all its epochs.
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.result.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.result.history[:] = state_dict.get("history", [])

    def _log_hparams(self, trainer: pl.Trainer) -> None:
        if trainer.logger is None or not trainer.is_global_zero:
            return
        final = {f"final_{self.monitor}": self.result.final, f"best_{self.monitor}": self.result.best}
        trainer.logger.log_hyperparams(self.hparams, {k: v for k, v in final.items() if math.isfinite(v)})

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_hparams(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_end also runs when a resumed run had no epoch left to train.
        trainer.callback_metrics[HISTORY_KEY] = torch.tensor(self.result.history, dtype=torch.float64)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._log_hparams(trainer)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at the end of every epoch, whatever the monitor did.

    ``ModelCheckpoint(save_last=True)`` rewrites last.ckpt only when it has just saved another
    checkpoint, i.e. when the monitor improved, so --resume would repeat every epoch since the
    best one. This is ModelCheckpoint's own every-epoch saving (monitor=None) under a fixed
    name; it tracks no metric, so it keeps no state in the checkpoints.
    """

    def __init__(self, dirpath: Path):
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1, enable_version_counter=False)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def accelerator_and_devices(cfg: RunConfig) -> tuple[str, Any]:
    """Map the config's ``device``/``devices`` onto Lightning's accelerator and devices."""
    if cfg.device == "auto":
        return ("gpu" if torch.cuda.is_available() else "cpu"), cfg.devices
    if cfg.device == "cpu":
        return "cpu", cfg.devices
    if cfg.device == "mps":
        return "mps", cfg.devices
    if ":" in cfg.device:
        return "gpu", [int(cfg.device.split(":")[1])]
    return "gpu", cfg.devices


def _relaunches_the_script(trainer: pl.Trainer) -> bool:
    """Whether ``trainer.fit`` would start the other ranks by re-running ``sys.argv`` (Lightning's
    ``ddp``): a second train.py or tune.py, not a training rank."""
    launcher = trainer.strategy.launcher
    return (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
        and launcher.num_processes * launcher.num_nodes > 1
    )


def _note_once(message: str) -> None:
    if message not in _noted:
        _noted.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)


def build_trainer(cfg: RunConfig, **kwargs: Any) -> pl.Trainer:
    """A Trainer for ``cfg``'s device, devices and strategy.

    Several devices run as ``ddp_spawn``: Lightning's ``ddp`` (also what ``auto`` picks) starts
    the other ranks by re-running the command line, which here would start another training
    or tuning run instead of a rank.
    """
    accelerator, devices = accelerator_and_devices(cfg)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, strategy=cfg.strategy, **kwargs)
    if not _relaunches_the_script(trainer):
        return trainer
    spawned = _SPAWNED_EQUIVALENT.get(cfg.strategy)
    if spawned is None:
        raise ConfigError(
            "<run config>", "strategy", f"{cfg.strategy!r} on several devices starts its processes by re-running the command line, which train.py and tune.py cannot do", "use strategy: ddp_spawn, or devices: 1"
        )
    if cfg.strategy != "auto":
        _note_once(f"strategy {cfg.strategy!r} runs as {spawned!r}: {cfg.strategy!r} would re-run the command line for each extra device")
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


def build_module(cfg: RunConfig, dm: pl.LightningDataModule) -> RegressionModule:
    """The LightningModule for ``cfg``, with the network sized from the data."""
    net_cls = resolve(cfg.net)
    net_kwargs = dict(cfg.net_config)
    accepted = accepted_kwargs(net_cls)
    if accepted is None or {"in_features", "out_features"} <= accepted:
        net_kwargs["in_features"], net_kwargs["out_features"] = feature_sizes(dm)
    criterion = resolve(cfg.criterion)
    if isinstance(criterion, type):
        criterion = criterion(**cfg.criterion_config)
    return RegressionModule(
        net=net_cls(**net_kwargs),
        criterion=criterion,
        optimizer=resolve(cfg.optimizer),
        optimizer_config=cfg.optimizer_config,
        scheduler=resolve(cfg.scheduler) if cfg.scheduler else None,
        scheduler_config=cfg.scheduler_config,
        epochs=cfg.epochs,
    )


def build_components(cfg: RunConfig, seed: int) -> tuple[pl.LightningDataModule, RegressionModule]:
    """The data and the module; a constructor rejecting its config is a ConfigError, raised
    before anything is written."""
    stage = "data"
    try:
        dm = build_datamodule(resolve(cfg.data), cfg.data_config, cfg.batch_size, seed)
        stage = "net"
        return dm, build_module(cfg, dm)
    except (TypeError, ValueError) as exc:
        raise ConfigError("<run config>", f"{stage}_config", f"{getattr(cfg, stage)} rejected its arguments: {exc}", f"fix {stage}_config") from None


def hparams_of(cfg: RunConfig) -> dict[str, Any]:
    """The config flattened for TensorBoard's HParams tab (``net_config.nodes`` etc.)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def fit_seed(
    cfg: RunConfig,
    seed: int,
    run_dir: Path,
    *,
    monitor: str = "val_loss",
    mode: str = "min",
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
    progress_bar: bool = False,
    after_fit: Callable[[], None] | None = None,
) -> SeedResult:
    """Train one seed of ``cfg`` into ``run_dir``: config.yaml, TensorBoard events, checkpoints, result.json.

    The hyperparameters and the final and best metric go to TensorBoard even when
    training stops early (pruned or interrupted), so every run shows in the HParams tab.

    Args:
        monitor, mode: the metric that is recorded, checkpointed on and early-stopped on.
        callbacks: extra callbacks, e.g. the tuner's pruning callback.
        resume: continue from ``checkpoints/last.ckpt`` when it exists.
        after_fit: called right after ``Trainer.fit`` returns (the tuner checks DDP pruning there).
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    dm, module = build_components(cfg, seed)
    result = SeedResult(seed, run_dir, mode=mode)
    checkpoint = cfg.checkpoint_config
    own_callbacks: list[Callback] = [RunRecorder(result, monitor, hparams_of(cfg) | {"seed": seed})]
    if checkpoint["save_best"]:
        own_callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode, save_top_k=1, enable_version_counter=False))
    if checkpoint["save_last"]:
        # After the best one, so last.ckpt holds this epoch's best-checkpoint state for --resume.
        own_callbacks.append(LastCheckpoint(run_dir / "checkpoints"))
    stopping = cfg.early_stopping_config
    if stopping["enabled"]:
        own_callbacks.append(EarlyStopping(monitor, patience=stopping["patience"], min_delta=stopping["min_delta"], mode=mode))
    logger = TensorBoardLogger(save_dir=str(run_dir.parent.parent), name=run_dir.parent.name, version=run_dir.name, default_hp_metric=False)
    trainer = build_trainer(
        cfg,
        max_epochs=cfg.epochs,
        logger=logger,
        callbacks=[*own_callbacks, *callbacks],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in own_callbacks),
        log_every_n_steps=1,
        deterministic=False,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg.to_dict() | {"seeds": [seed]}, run_dir / "config.yaml")
    last = run_dir / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume and last.exists() else None)
        # The ranks' history: from this process's RunRecorder or, under ddp_spawn, from rank 0's.
        history = trainer.callback_metrics.get(HISTORY_KEY)
        if history is not None:
            result.history[:] = history.tolist()
        if after_fit is not None:
            after_fit()
    except (SystemExit, KeyboardInterrupt) as exc:
        # A signal reaches this process only (kill, --workers): stop the ranks ddp_spawn started.
        stop_spawned_ranks(trainer)
        if isinstance(exc, KeyboardInterrupt):
            raise
        # Lightning answers Ctrl-C and SIGTERM with sys.exit; callers need to know it was an interrupt.
        raise KeyboardInterrupt(f"training interrupted ({exc.__class__.__name__})") from exc
    finally:
        result.seconds = time.perf_counter() - start
    # Only a finished run gets a result file: --resume reads it instead of training again.
    if trainer.is_global_zero:
        (run_dir / RESULT_FILE).write_text(json.dumps(result.to_json()))
    return result


def seed_dirs(cfg: RunConfig, runs_root: str | Path) -> list[Path]:
    group = cfg.group_name()
    return [Path(runs_root) / cfg.project / group / str(seed) for seed in cfg.seeds]


def load_result(run_dir: Path) -> SeedResult | None:
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return SeedResult(data["seed"], run_dir, data["history"], data["mode"], data["seconds"])


def train(
    cfg: RunConfig,
    runs_root: str | Path = "runs",
    *,
    resume: bool = False,
    progress_bar: bool = False,
    on_seed: Callable[[SeedResult], None] | None = None,
    source: str = "<run config>",
) -> TrainResult:
    """Train one run per seed of ``cfg`` under ``runs_root/<project>/<group>/<seed>``.

    Without ``resume`` an existing run folder is an error (nothing is overwritten);
    with it, finished seeds are read back and unfinished ones continue from their last
    checkpoint.
    """
    dirs = seed_dirs(cfg, runs_root)
    if not resume:
        existing = [d for d in dirs if d.exists()]
        if existing:
            raise ConfigError(str(existing[0]), None, "this run already exists", "pass --resume to continue it, or move the folder away to start over")
    results = []
    for seed, run_dir in zip(cfg.seeds, dirs):
        result = load_result(run_dir) if resume else None
        if result is None:
            result = fit_seed(cfg, seed, run_dir, resume=resume, progress_bar=progress_bar)
        results.append(result)
        if on_seed is not None:
            on_seed(result)
    return TrainResult(results, "val_loss")


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners ("GPU available: ...") that bury our output,
    here and in the ranks a spawn-based DDP strategy starts for this process's runs."""
    global _quiet
    _quiet = True
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning vs torch 2.13, harmless
    # --resume continues into its own checkpoint folder; new runs never reuse one.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
