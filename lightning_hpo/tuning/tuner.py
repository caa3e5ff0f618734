"""One tune() call: run (or continue) the study until it holds its trials, one progress
line per trial, then print the best trial and write its config (``finish``).
"""

from __future__ import annotations

import gc
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lightning_hpo.attrs import FAIL_REASON, INTERRUPTED, RETRY_ATTR, RUN_DIR, SURPLUS
from lightning_hpo.config.class_paths import shareable
from lightning_hpo.config.optimize import OptimizeConfig
from lightning_hpo.config.run import RunConfig
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.errors import one_line
from lightning_hpo.live.screen import short
from lightning_hpo.storage.connect import default_url, redact
from lightning_hpo.storage.dashboard import dashboard_command
from lightning_hpo.tuning.best import best_trial_config
from lightning_hpo.tuning.liveness import TrialTakenOver, fail_dead_trials, release_own_trials
from lightning_hpo.tuning.objective import TrialFailed, make_objective
from lightning_hpo.tuning.signals import (
    ignore_further_signals,
    release_signals,
    restored_signal_handlers,
)
from lightning_hpo.tuning.study import (
    TuneOptions,
    counted,
    create_or_load_study,
    finished_position,
    remaining,
    state_counts,
    study_folder,
)


class Progress:
    """One line per finished trial, with the study's running counts and best value."""

    def __init__(self, opt: OptimizeConfig, echo: Callable[[str], None]):
        self.opt, self.echo = opt, echo

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.system_attrs.get(SURPLUS):
            return
        trials = study.get_trials(deepcopy=False)
        complete, pruned, failed = state_counts(trials)
        counts = f"done {complete}, pruned {pruned}, failed {failed}"
        params = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items())
        if trial.state == TrialState.COMPLETE:
            outcome = f"{self.opt.value_name()} {trial.value:.5g}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned at step {trial.last_step} ({self.opt.metric} {short(trial.intermediate_values.get(trial.last_step))})"
        else:
            outcome = "FAILED: " + (
                trial.user_attrs.get(FAIL_REASON)
                or ("interrupted" if trial.system_attrs.get(INTERRUPTED) else "unknown")
            )
        try:
            best = f"best {study.best_value:.5g} (trial {study.best_trial.number})"
        except ValueError:
            best = "best -"
        retry = trial.user_attrs.get(RETRY_ATTR)
        if isinstance(retry, dict) and "of" in retry:
            if retry.get("seeds"):  # seeds trained one after another: where each continued
                how = retry["seeds"]
            elif retry.get("continued_at_epoch"):
                how = f"continued at epoch {retry['continued_at_epoch']}"
            else:
                how = f"started over: {retry.get('started_over')}"
            outcome += f" (retry of trial {retry['of']}, {how})"
        self.echo(
            f"[{finished_position(trials, trial)}/{self.opt.trials}] trial {trial.number} {outcome} | {params} | {counts} | {best}"
        )


class StopAtTotal:
    """Stops this worker once the study's total is reached, counting other workers' trials."""

    def __init__(self, total: int):
        self.total = total

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if counted(study.get_trials(deepcopy=False)) >= self.total:
            study.stop()


def collect_and_freeze(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """After each trial: free its garbage, then freeze what survives.

    Replaces ``gc_after_trial=True``, whose full collection of a heap holding torch,
    Lightning and Optuna takes ~0.25 s per trial; after ``gc.freeze()`` the next
    collection scans only what later trials allocated (benchmarks/bench_trial_overhead.py).
    """
    gc.collect()
    gc.freeze()


def _optimize(
    study: optuna.Study,
    run: RunConfig,
    opt: OptimizeConfig,
    options: TuneOptions,
    folder: Path,
    echo: Callable[[str], None],
) -> bool:
    """Pull trials until the study is full: True; False after a trial this worker dropped
    because another worker had taken it over (``TrialTakenOver``, said in one line)."""
    try:
        try:
            study.optimize(
                make_objective(run, opt, options, folder),
                n_trials=None,  # StopAtTotal: pull trials while the study is not full
                catch=(TrialFailed,),
                callbacks=[
                    collect_and_freeze,
                    Progress(opt, echo),
                    # A signal that came while Optuna told the trial's outcome stops here.
                    lambda study, _: release_signals(),
                    # Workers that died meanwhile, on any host, as Optuna does for RDB.
                    lambda study, _: fail_dead_trials(study, echo, options.heartbeat),
                    StopAtTotal(opt.trials),
                ],
            )
        finally:
            release_signals()  # the study ended with a trial: a signal held since stops it
    except TrialTakenOver as taken:
        echo(f"note: {taken}")
        if taken.interrupted:
            raise KeyboardInterrupt(str(taken)) from None
        return False
    except KeyboardInterrupt:
        # The objective failed its own trial as interrupted; interrupted outside it, in
        # study.ask, the trial just created is still RUNNING.
        ignore_further_signals()
        try:
            release_own_trials(study)
        except Exception as exc:  # noqa: BLE001 - the storage is out: the interrupt goes on
            echo(
                "note: could not mark this worker's running trial interrupted "
                f"({redact(one_line(exc))})"
            )
        raise
    return True


def tune(
    run: RunConfig,
    opt: OptimizeConfig,
    options: TuneOptions | None = None,
    echo: Callable[[str], None] = print,
    on_study: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Run (or continue) the study until it holds ``opt.trials`` trials; return it.

    Rerunning continues: only missing trials run. Trials interrupted by Ctrl-C/SIGTERM or
    left behind by a dead worker do not count and are run again; a trial of this worker's
    that another took over (``TrialTakenOver``) is dropped with a note. ``on_study`` is given
    the study once it is open (the live display watches it).
    """
    options = options or TuneOptions()
    study = create_or_load_study(run, opt, options)
    if on_study is not None:
        on_study(study)
    fail_dead_trials(study, echo, options.heartbeat)
    if remaining(study, opt.trials) > 0:
        folder = study_folder(run, opt, study, options, echo)
        with restored_signal_handlers():
            try:
                while not _optimize(study, run, opt, options, folder, echo):
                    if remaining(study, opt.trials) == 0:  # the dropped trial's copy filled it
                        break
            finally:
                gc.unfreeze()  # a Python caller's heap is its own again
    return study


def finish(
    run: RunConfig,
    opt: OptimizeConfig,
    study: optuna.Study,
    options: TuneOptions,
    echo: Callable[[str], None] = print,
) -> Path | None:
    """Print the "Best trial" block (number, value, params, path) and write best.yaml, the
    config that trial trained (``tuning.best``). None when no trial completed."""
    try:
        best = study.best_trial
    except ValueError:
        echo("No trial completed, so there is no best trial.")
        return None
    echo("Best trial:")
    echo(f"  Number: {best.number}")
    echo(f"  Value: {best.value:.6g} ({opt.value_name()}, {opt.direction})")
    echo("  Params:")
    for k, v in best.params.items():
        echo(f"    {k}: {short(v)}")
    echo(f"  Path: {best.user_attrs.get(RUN_DIR, '?')}")
    folder = study_folder(run, opt, study, options, echo)
    path = folder / "best.yaml"
    config, warning = best_trial_config(run, opt, best, folder, path)
    dump_yaml(shareable(config), path)
    if warning is not None:
        echo(warning)
    echo(f"Best config: {path}  (python train.py --config {path})")
    url = options.storage or default_url(run.project)
    echo(f"Study: {redact(url)}  ({dashboard_command(url)})")
    return path


def quiet_optuna(debug: bool = False) -> None:
    """Our per-trial line replaces Optuna's; keep its warnings only with --debug."""
    optuna.logging.set_verbosity(optuna.logging.WARNING if debug else optuna.logging.ERROR)
    if not debug:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sys.stdout.reconfigure(line_buffering=True)
