"""Training runs: one Lightning Trainer per run, logged to TensorBoard, checkpointed.

A run of several seeds trains them all at once in one Trainer when it can (fused seeds,
``fit_fused``), else one Trainer per seed, one after another (``fit_seed``). ``fit_run``
chooses; ``train`` (train.py) and the tuner's objective both call it. A run builds its data
once (``build_data``: constructed, ``prepare_data`` called), and every seed trains on it.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn

from lightning_hpo.config.class_paths import logger_fusion_blocker, shareable
from lightning_hpo.config.lightning_args import fusion_blocker
from lightning_hpo.config.run import RunConfig
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.console import note_once
from lightning_hpo.errors import ConfigError
from lightning_hpo.fused.early_stopping import SeedEarlyStopping
from lightning_hpo.fused.seeds import SeedStates
from lightning_hpo.metrics import VAL_LOSS
from lightning_hpo.training import provenance
from lightning_hpo.training.callbacks import RunCheckpoints, RunRecorder
from lightning_hpo.training.checkpoint_io import BackgroundCheckpointIO
from lightning_hpo.training.components import (
    build_data,
    build_module,
    build_net,
    config_errors,
    data_for_seed,
    hparams_of,
    module_arguments,
)
from lightning_hpo.training.extensions import end_runs, run_callbacks, run_loggers
from lightning_hpo.training.files import CHECKPOINT_DIR, CONFIG_FILE, LAST, checkpoint_file
from lightning_hpo.training.results import (
    SeedResult,
    TrainResult,
    load_result,
    require_history,
)
from lightning_hpo.training.trainer import build_trainer, stop_spawned_ranks


def _checkpoints(cfg: RunConfig, run_dir: Path, monitor: str, mode: str) -> list[Callback]:
    saving = cfg.checkpoint_config
    if not (saving["save_best"] or saving["save_last"]):
        return []
    return [
        RunCheckpoints(
            run_dir / CHECKPOINT_DIR, monitor, mode, saving["save_best"], saving["save_last"]
        )
    ]


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How a run trains, beyond what its config says.

    Args:
        monitor, mode: the metric that is recorded, checkpointed on and early-stopped on.
        callbacks: extra callbacks, e.g. the tuner's pruning callback.
        resume: continue from ``checkpoints/last.ckpt`` where it exists.
        progress: Lightning's per-batch bar.
        after_fit: called right after ``Trainer.fit`` returns (the tuner checks DDP pruning there).
        on_curve: told, before training starts, what the curve ``callbacks`` see is
            (``curve_kind``): the tuner records it, so a pruner compares like with like.
        on_epoch: told after each epoch, of every seed (unlike ``callbacks``): the epoch
            (from 1) and each seed's recorded metric (``RunRecorder``): train.py's live display.
    """

    monitor: str = VAL_LOSS
    mode: str = "min"
    callbacks: Sequence[Callback] = ()
    resume: bool = False
    progress: bool = False
    after_fit: Callable[[], None] | None = None
    on_curve: Callable[[str], None] | None = None
    on_epoch: Callable[[int, dict[int, float]], None] | None = None


def _fit(
    cfg: RunConfig,
    trainer: pl.Trainer,
    module: pl.LightningModule,
    dm: pl.LightningDataModule,
    recorder: RunRecorder,
    ckpt_path: Path | None,
    after_fit: Callable[[], None] | None,
) -> None:
    """Write each seed's config.yaml and provenance.yaml, fit, and write each seed's
    result.json once it has finished."""
    record = provenance.collect(cfg.device, count=cfg.devices)
    for r in recorder.results:
        r.run_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(shareable(cfg.to_dict()) | {"seeds": [r.seed]}, r.run_dir / CONFIG_FILE)
        provenance.write(record, r.run_dir)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            if (
                ckpt_path
            ):  # --resume continues in its own checkpoint folder: expected, not worth a warning
                warnings.filterwarnings(
                    "ignore", message=r"Checkpoint directory .* exists and is not empty"
                )
            # The CSV logger's folder is the seed's, which already holds config.yaml.
            warnings.filterwarnings(
                "ignore", message=r"Experiment logs directory .* exists and is not empty"
            )
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
        recorder.collect(trainer)  # this process's histories, or under ddp_spawn rank 0's
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
        end_runs(trainer.loggers)
        for r in recorder.results:
            r.seconds = time.perf_counter() - start
    # Only a finished run that recorded its metric gets a result file: --resume reads it
    # instead of training again.
    if trainer.is_global_zero:
        require_history(recorder.results, recorder.monitor, trainer.current_epoch)
        for r in recorder.results:
            r.save()


def fit_seed(
    cfg: RunConfig,
    seed: int,
    run_dir: Path,
    options: FitOptions = FitOptions(),
    dm: pl.LightningDataModule | None = None,
) -> SeedResult:
    """Train one seed of ``cfg`` into ``run_dir``: config.yaml, TensorBoard events,
    checkpoints, result.json. ``dm``: the run's data (``build_data``), else built for this seed.

    The hyperparameters and the final and best metric go to TensorBoard even when
    training stops early (pruned or interrupted), so every run shows in the HParams tab.
    """
    monitor, mode = options.monitor, options.mode
    dm = data_for_seed(build_data(cfg, seed) if dm is None else dm, seed)
    module = build_module(cfg, dm, seed)
    result = SeedResult(seed, run_dir, mode=mode)
    recorder = RunRecorder([result], monitor, hparams_of(cfg), on_epoch=options.on_epoch)
    own: list[Callback] = [recorder, *_checkpoints(cfg, run_dir, monitor, mode)]
    stopping = cfg.early_stopping_config
    if stopping["enabled"]:
        own.append(
            EarlyStopping(
                monitor, patience=stopping["patience"], min_delta=stopping["min_delta"], mode=mode
            )
        )
    trainer = build_trainer(
        cfg,
        logger=run_loggers(cfg, run_dir),
        callbacks=[*own, *run_callbacks(cfg), *options.callbacks],
        progress=options.progress,
        checkpointing=False,  # RunCheckpoints writes them; no default ModelCheckpoint
        # Written by a background thread, each file whole; the trainer's teardown waits
        # for them (and raises a failed write) before fit returns.
        plugins=[BackgroundCheckpointIO()],
    )
    last = checkpoint_file(run_dir, LAST)
    resume_from = last if options.resume and last.exists() else None
    _fit(cfg, trainer, module, dm, recorder, resume_from, options.after_fit)
    return result


def fit_fused(
    cfg: RunConfig,
    seeds: Sequence[int],
    run_dirs: Sequence[Path],
    dm: pl.LightningDataModule,
    nets: Sequence[nn.Module],
    stacking: str,
    options: FitOptions = FitOptions(),
) -> list[SeedResult]:
    """Train ``seeds`` together in one Trainer: each seed's folder gets what ``fit_seed`` would
    write (config.yaml, its TensorBoard run, its own best and last checkpoint, result.json),
    plus a ``mean`` TensorBoard run beside them. ``options.callbacks`` see the seeds' mean metrics.

    ``nets`` are the seeds' networks (``build_net``) and ``stacking`` how they run
    together, both as ``fused.blocker`` checked them.
    """
    from lightning_hpo.fused.checkpoints import SeedCheckpointIO, SeedCheckpoints
    from lightning_hpo.fused.loggers import SeedLoggers
    from lightning_hpo.fused.module import FusedModule
    from lightning_hpo.fused.stacking import stack

    monitor, mode = options.monitor, options.mode
    states = SeedStates(seeds)
    module = FusedModule(
        net=stack(nets, stacking), mode=stacking, states=states, **module_arguments(cfg, dm)
    )
    results = [
        SeedResult(seed, run_dir, mode=mode, together=len(seeds))
        for seed, run_dir in zip(seeds, run_dirs)
    ]
    recorder = RunRecorder(results, monitor, hparams_of(cfg), states, options.on_epoch)
    own: list[Callback] = [recorder]
    saving = cfg.checkpoint_config
    if saving["save_best"] or saving["save_last"]:
        own.append(
            SeedCheckpoints(
                states, run_dirs, monitor, mode, saving["save_best"], saving["save_last"]
            )
        )
    stopping = cfg.early_stopping_config
    if stopping["enabled"]:
        own.append(
            SeedEarlyStopping(states, monitor, stopping["patience"], stopping["min_delta"], mode)
        )
    group = Path(run_dirs[0]).parent
    loggers = SeedLoggers(
        run_loggers(cfg, group / "mean"),
        {seed: run_loggers(cfg, d) for seed, d in zip(seeds, run_dirs)},
        states,
    )
    io = SeedCheckpointIO(run_dirs, [p.shape for p in module.net.parameters()])
    # enable_checkpointing=False: no default ModelCheckpoint; SeedCheckpoints saves through the io plugin.
    trainer = build_trainer(
        cfg,
        logger=loggers,
        callbacks=[*own, *run_callbacks(cfg), *options.callbacks],
        progress=options.progress,
        checkpointing=False,
        plugins=[BackgroundCheckpointIO(io)],
    )
    last = [checkpoint_file(d, LAST) for d in run_dirs]
    dm.fuse(list(seeds))
    _fit(
        cfg,
        trainer,
        module,
        dm,
        recorder,
        last[0] if options.resume else None,
        options.after_fit,
    )
    return results


def plan_fusion(
    cfg: RunConfig, seeds: Sequence[int], dm: pl.LightningDataModule | None = None
) -> tuple[pl.LightningDataModule, list[nn.Module], str | None, str | None]:
    """The data (``dm``, else built), each seed's network, and how they train fused
    (``fused.blocker``): a stacking mode, or None and the reason they cannot (then no
    network is built)."""
    from lightning_hpo.fused.checks import blocker, module_blocker

    dm = build_data(cfg, seeds[0]) if dm is None else dm
    reason = module_blocker(cfg.components.module)
    if reason is not None:
        return dm, [], None, reason
    with config_errors(cfg, "net"):
        nets = [build_net(cfg, dm, seed) for seed in seeds]
    stacking, reason = blocker(
        dm, nets, cfg.components.optimizer, cfg.optimizer_config, cfg.devices, cfg.components.module
    )
    if stacking is not None and fusion_blocker(cfg.trainer_config):
        stacking, reason = None, fusion_blocker(cfg.trainer_config)
    if stacking is not None and logger_fusion_blocker(cfg.loggers):
        stacking, reason = None, logger_fusion_blocker(cfg.loggers)
    return dm, nets, stacking, reason


def _cannot_fuse(source: str, reason: str | None) -> ConfigError:
    return ConfigError(
        source,
        "fuse_seeds",
        f"true, but this run cannot be fused: {reason}",
        "set fuse_seeds: auto (seeds then train one after another) or false",
    )


def check_fusion(cfg: RunConfig, source: str = "<run config>") -> None:
    """``fuse_seeds: true`` on a run that cannot fuse is a config error, raised before
    anything is written (tune.py checks the run config before its study opens)."""
    if cfg.fuse_seeds is True and len(cfg.seeds) > 1:
        *_, stacking, reason = plan_fusion(cfg, cfg.seeds)
        if stacking is None:
            raise _cannot_fuse(source, reason)


def _resume_fused(
    cfg: RunConfig,
    seeds: Sequence[int],
    run_dirs: Sequence[Path],
    dm: pl.LightningDataModule,
    nets: Sequence[nn.Module],
    stacking: str,
    options: FitOptions,
) -> list[SeedResult]:
    """``--resume`` of fused seeds: every seed continues from its own ``last.ckpt``, those at
    one step together (``fused.checkpoints.resume_groups``); a seed without a usable one
    starts over, and says why. ``options.callbacks`` go to the first group only."""
    from lightning_hpo.fused.checkpoints import resume_groups

    groups, over = resume_groups(seeds, [checkpoint_file(d, LAST) for d in run_dirs])
    plan = [(group, True) for group in groups]
    if over:
        for seed, why in over.items():
            note_once(f"seed {seed} starts over: {why}")
        plan.append(([s for s in seeds if s in over], False))
    later = dataclasses.replace(options, callbacks=(), after_fit=None, on_curve=None)
    where = {seed: i for i, seed in enumerate(seeds)}
    results: dict[int, SeedResult] = {}
    for n, (group, resume) in enumerate(plan):
        picked = [where[seed] for seed in group]
        trained = fit_fused(
            cfg,
            group,
            [run_dirs[i] for i in picked],
            dm,
            [nets[i] for i in picked],
            stacking,
            dataclasses.replace(options if n == 0 else later, resume=resume),
        )
        results.update(zip(group, trained))
    return [results[seed] for seed in seeds]


def curve_kind(n_seeds: int, fused: bool) -> str:
    """What a run's reported curve is: the mean of its fused seeds, or its first seed's."""
    if n_seeds == 1:
        return "one seed"
    return f"mean of {n_seeds} seeds" if fused else f"first of {n_seeds} seeds"


def fit_run(
    cfg: RunConfig,
    seeds: Sequence[int],
    run_dirs: Sequence[Path],
    options: FitOptions = FitOptions(),
    *,
    on_seed: Callable[[SeedResult], None] | None = None,
    source: str = "<run config>",
) -> list[SeedResult]:
    """Train ``seeds`` of ``cfg``: fused in one Trainer when ``cfg.fuse_seeds`` allows and
    the run can be (``fused.blocker``), else one Trainer per seed.

    Seed after seed, ``options.callbacks`` and ``after_fit`` go to the first seed only (its curve
    is the one a pruner sees); fused, they see the seeds' mean. Seed after seed and resumed,
    a seed that finished (``result.json``: a retried trial's) is read back, not trained.
    """
    dm = build_data(cfg, seeds[0])  # once: every seed trains on it
    if len(seeds) > 1 and cfg.fuse_seeds is not False:
        dm, nets, stacking, reason = plan_fusion(cfg, seeds, dm)
        if stacking is not None:
            if options.on_curve is not None:
                options.on_curve(curve_kind(len(seeds), fused=True))
            if options.resume:
                results = _resume_fused(cfg, seeds, run_dirs, dm, nets, stacking, options)
            else:
                results = fit_fused(cfg, seeds, run_dirs, dm, nets, stacking, options)
            for r in results:
                if on_seed is not None:
                    on_seed(r)
            return results
        if cfg.fuse_seeds is True:
            raise _cannot_fuse(source, reason)
        note_once(f"seeds train one after another, not fused: {reason}")
    # Seed after seed, only the first seed's curve is reported (and can be pruned).
    if options.on_curve is not None:
        options.on_curve(curve_kind(len(seeds), fused=False))
    later = dataclasses.replace(options, callbacks=(), after_fit=None, on_curve=None)
    results = []
    for index, (seed, run_dir) in enumerate(zip(seeds, run_dirs)):
        kept = load_result(run_dir) if options.resume else None  # finished: not trained again
        result = kept or fit_seed(cfg, seed, run_dir, options if index == 0 else later, dm)
        results.append(result)
        if on_seed is not None:
            on_seed(result)
    return results


def seed_dirs(cfg: RunConfig, output: str | Path) -> list[Path]:
    group = cfg.group_name()
    return [Path(output) / cfg.project / group / str(seed) for seed in cfg.seeds]


def refuse_existing(cfg: RunConfig, output: str | Path) -> None:
    """A run folder that already exists is never overwritten: ConfigError, unless resumed."""
    existing = [d for d in seed_dirs(cfg, output) if d.exists()]
    if existing:
        raise ConfigError(
            str(existing[0]),
            None,
            "this run already exists",
            "pass --resume to continue it, or move the folder away to start over",
        )


def train(
    cfg: RunConfig,
    output: str | Path = "runs",
    *,
    resume: bool = False,
    progress: bool = False,
    on_seed: Callable[[SeedResult], None] | None = None,
    on_epoch: Callable[[int, dict[int, float]], None] | None = None,
    source: str = "<run config>",
) -> TrainResult:
    """Train every seed of ``cfg`` under ``output/<project>/<group>/<seed>``.

    Without ``resume`` an existing run folder is an error (nothing is overwritten);
    with it, finished seeds are read back and unfinished ones continue from their last
    checkpoint. ``on_seed`` is told each seed's result, ``on_epoch`` each epoch's values
    (``FitOptions.on_epoch``).
    """
    dirs = seed_dirs(cfg, output)
    if not resume:
        refuse_existing(cfg, output)
    done = {d: load_result(d) for d in dirs} if resume else {}
    for result in done.values():
        if result is not None and on_seed is not None:
            on_seed(result)
    todo = [(seed, d) for seed, d in zip(cfg.seeds, dirs) if done.get(d) is None]
    trained = (
        fit_run(
            cfg,
            [s for s, _ in todo],
            [d for _, d in todo],
            FitOptions(resume=resume, progress=progress, on_epoch=on_epoch),
            on_seed=on_seed,
            source=source,
        )
        if todo
        else []
    )
    by_dir = {r.run_dir: r for r in trained} | {d: r for d, r in done.items() if r is not None}
    return TrainResult([by_dir[d] for d in dirs])
