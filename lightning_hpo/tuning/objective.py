"""The objective: each trial trains the run config with suggested parameters.

The stock ``PyTorchLightningPruningCallback`` reports the metric every epoch, at step =
epoch, and asks the study's pruner (PFL by default) whether to stop. A trial's seeds
train fused in one Trainer, which reports their mean; a trial that cannot fuse reports
its first seed's curve (the others train after it, unpruned). Either way every trial's
intermediate values are one curve over epochs, so every pruner compares like with like.

A trial that another worker ended meanwhile, taking this one for dead, is not this
worker's to end: the objective raises ``liveness.TrialTakenOver`` instead of its outcome.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import optuna

from lightning_hpo.attrs import (
    FAIL_REASON,
    GROUP_NAME,
    RETRY_ATTR,
    RUN_DIR,
    SURPLUS,
)
from lightning_hpo.config.module_contract import scheduler_interval
from lightning_hpo.config.optimize import OptimizeConfig
from lightning_hpo.config.run import RunConfig
from lightning_hpo.errors import ConfigError
from lightning_hpo.tuning.continuation import prepare as continuation_of
from lightning_hpo.tuning.liveness import Heartbeat, check_still_ours, mark_interrupted
from lightning_hpo.tuning.signals import hold_signals, ignore_further_signals
from lightning_hpo.tuning.study import TuneOptions, counted, study_project


def lr_schedule(cfg: RunConfig) -> dict[str, Any]:
    """What PFL can know of a trial's schedule (user attr ``lr_schedule``): the scheduler, how
    often it steps, and its period in epochs (``T_max`` as the module fills it: the run's
    epochs, whether it steps per epoch or spreads them over every step; None for a period
    given in steps, which PFL cannot place on its epochs)."""
    interval = scheduler_interval(cfg.scheduler_config)
    given = cfg.scheduler_config.get("T_max")
    t_max = cfg.epochs if given is None else (given if interval == "epoch" else None)
    return {"name": cfg.scheduler, "T_max": t_max, "interval": interval}


class TrialFailed(Exception):
    """A trial's training raised: the trial ends FAIL with the reason stored, the study goes on."""


def _system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    # Bookkeeping for this tool, kept out of the user attributes dashboards show.
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)


def make_objective(
    run: RunConfig, opt: OptimizeConfig, options: TuneOptions, folder: Path
) -> Callable[[optuna.Trial], float]:
    """The objective: merge the trial's parameters into ``run``, train every seed into
    ``folder/<group>[<trial>]/<seed>``, return the seeds' mean."""
    from optuna_integration import PyTorchLightningPruningCallback

    from lightning_hpo.attrs import (
        CURVE_ATTR,
        DEVICES_ATTR,
        EPOCHS_ATTR,
        LR_SCHEDULE_ATTR,
        N_SEEDS_ATTR,
        SEEDS_ATTR,
    )
    from lightning_hpo.training import provenance
    from lightning_hpo.training.runs import FitOptions, fit_run

    mode = "min" if opt.direction == "minimize" else "max"

    def train_trial(trial: optuna.Trial) -> float:
        if counted(trial.study.get_trials(deepcopy=False), before=trial.number) >= opt.trials:
            # Another worker took the last slot between our count and our ask: the
            # lower trial numbers win, this one ends without running.
            _system_attr(trial, SURPLUS, True)
            trial.set_user_attr(
                FAIL_REASON, f"not run: the study already holds its {opt.trials} trials"
            )
            trial.study.stop()
            raise TrialFailed("surplus")
        beating = Heartbeat(trial, options.heartbeat) if options.heartbeat else nullcontext()
        try:
            cfg = opt.suggest(trial, run)
            cfg.project = study_project(run)
            group = f"{cfg.group_name()}[{trial.number}]"
            run_dir = folder / group
            trial.set_user_attr(GROUP_NAME, group)
            trial.set_user_attr(RUN_DIR, str(run_dir))
            trial.set_user_attr(EPOCHS_ATTR, cfg.epochs)
            trial.set_user_attr(N_SEEDS_ATTR, len(cfg.seeds))
            trial.set_user_attr(SEEDS_ATTR, list(cfg.seeds))
            trial.set_user_attr(DEVICES_ATTR, provenance.devices(cfg.device, cfg.devices))
            continuation = continuation_of(trial, run_dir, cfg)
            if continuation.record() is not None:
                trial.set_user_attr(RETRY_ATTR, continuation.record())
            if not cfg.own_parts:  # a module's own configure_optimizers: the schedule is unknown
                trial.set_user_attr(LR_SCHEDULE_ATTR, lr_schedule(cfg))
            callback = PyTorchLightningPruningCallback(trial, monitor=opt.metric)
            with beating:  # on any storage: a worker dying anywhere is found
                results = fit_run(
                    cfg,
                    cfg.seeds,
                    [run_dir / str(seed) for seed in cfg.seeds],
                    FitOptions(
                        monitor=opt.metric,
                        mode=mode,
                        callbacks=(callback,),
                        progress=options.progress,
                        after_fit=callback.check_pruned,
                        resume=continuation.epoch > 0,
                        on_curve=lambda kind: trial.set_user_attr(CURVE_ATTR, kind),
                    ),
                    # Seeds trained one after another report only the first one's curve:
                    # a trial taken over during a later seed is found after it, not at the end.
                    on_seed=lambda _result: check_still_ours(trial),
                )
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever goes wrong in a trial fails it alone
            # A value the search produced that a component rejects (ConfigError, already one
            # line), a metric an epoch did not log, an error in training: the study goes on.
            reason = (
                str(exc) if isinstance(exc, ConfigError) else f"{exc.__class__.__name__}: {exc}"
            )
            trial.set_user_attr(FAIL_REASON, reason.strip()[:2000])
            raise TrialFailed(reason) from exc
        # The seeds' mean of the final epoch's metric, or of each seed's best epoch's.
        value = statistics.fmean(r.final if opt.objective == "last" else r.best for r in results)
        if not math.isfinite(value):
            reason = f"{opt.metric} ended at {value}"
            trial.set_user_attr(FAIL_REASON, reason)
            raise TrialFailed(reason)
        return value

    def objective(trial: optuna.Trial) -> float:
        try:
            value = train_trial(trial)
        except (KeyboardInterrupt, SystemExit) as exc:
            # Lightning turns Ctrl-C and SIGTERM into SystemExit, which Optuna would leave RUNNING.
            ignore_further_signals()  # a second signal must not break the writes that end the trial
            # Failed and queued already by another worker: nothing of it is ours to write.
            check_still_ours(trial, interrupted=True)
            mark_interrupted(trial.study, trial._trial_id)  # Optuna's tell fails it
            raise KeyboardInterrupt(str(exc)) from exc
        except Exception:
            hold_signals()  # until Optuna has told the outcome (tuning.tuner releases them)
            # Pruned, failed, or a report refused (UpdateFinishedTrialError): by now another
            # worker may have taken this one for dead and ended the trial.
            check_still_ours(trial)
            raise
        hold_signals()
        check_still_ours(trial)  # since the last report: Optuna cannot tell a finished trial
        return value

    return objective
