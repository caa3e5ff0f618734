"""The study: each trial trains the run config with suggested parameters.

The stock ``PyTorchLightningPruningCallback`` reports the metric every epoch, at step =
epoch, and asks the study's pruner (PFL by default) whether to stop. A trial's seeds
train fused in one Trainer, which reports their mean; a trial that cannot fuse reports
its first seed's curve (the others train after it, unpruned). Either way every trial's
intermediate values are one curve over epochs, so every pruner compares like with like.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import math
import os
import re
import signal
import socket
import threading
import time
import statistics
import sys
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from lightning_hpo.attrs import FAIL_REASON, GROUP_NAME, HOST, INTERRUPTED, PID, RETRIED_FROM, RETRY_OF, RUN_DIR, STALE, STUDY_UID, SURPLUS  # noqa: F401 - re-exported
from lightning_hpo.config import RunConfig
from lightning_hpo.dashboard import dashboard_command
from lightning_hpo.errors import ConfigError
from lightning_hpo.retries import queue_retry
from lightning_hpo.search import OptimizeConfig
from lightning_hpo.storage import default_url, open_storage, redact
from lightning_hpo.yamlio import dump_yaml


class TrialFailed(Exception):
    """A trial's training raised: the trial ends FAIL with the reason stored, the study goes on."""


@dataclass
class TuneSettings:
    """Where and how a study runs. The command line fills these in."""

    storage: str | None = None  # default: sqlite:///<project>_Opt.db
    runs_root: str = "runs"
    progress_bar: bool = False  # Lightning's per-batch bars
    heartbeat: int | None = 30  # seconds; RDB storages only
    max_trials: int | None = None  # this process's share (workers); None: until the study's total


def study_project(run: RunConfig) -> str:
    return f"{run.project}_Opt"


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """The configured sampler, created afresh for every trial with ``seed + trial.number``.

    A seeded study stays reproducible, and processes that ask at the same moment with
    the same history (workers, machines) still get different suggestions: the storage
    hands each of them its own trial number.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler]):
        self._make = make
        self._sampler = make(0)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._sampler = self._make(trial.number)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def counted(trials: list[optuna.trial.FrozenTrial], before: int | None = None) -> int:
    """Trials that count toward the study's total: finished, failed and running ones
    (only those numbered below ``before`` when given).

    Interrupted, surplus or dead-worker failures do not count (they are run again), nor
    do queued trials: a queued retry is the next trial a worker asks for, and fills a
    free slot.
    """
    retried = {t.system_attrs.get(RETRIED_FROM) for t in trials}
    n = 0
    for t in trials:
        if t.state == TrialState.WAITING or (before is not None and t.number >= before):
            continue
        if t.state == TrialState.FAIL and (t.system_attrs.get(INTERRUPTED) or t.system_attrs.get(STALE) or t.system_attrs.get(SURPLUS) or t.number in retried):
            continue
        n += 1
    return n


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_workers(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker process on this host is gone as FAIL, and queue
    their parameters once more. Trials of other hosts and live processes are never touched."""
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.system_attrs.get(PID)
        if t.system_attrs.get(HOST) != host or pid is None or _pid_alive(pid) or pid == os.getpid():
            continue
        try:
            study._storage.set_trial_system_attr(t._trial_id, STALE, True)
            study._storage.set_trial_user_attr(t._trial_id, FAIL_REASON, f"its worker (pid {pid} on this host) died: failed, and its parameters queued once more")
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        failed.append(t.number)
        queue_retry(study, t)  # once, and never a retry of a retry
    return failed


def create_or_load_study(run: RunConfig, opt: OptimizeConfig, settings: TuneSettings) -> optuna.Study:
    """Open the storage and create the study, or load it and check it still matches the config.

    A seeded sampler is reseeded from each trial's number, so a continued study or a
    second worker does not replay the first one's suggestions.
    """
    url = settings.storage or default_url(run.project)
    storage = open_storage(url, heartbeat=settings.heartbeat)
    try:
        study = optuna.load_study(study_name=opt.study_name, storage=storage, pruner=opt.make_pruner())
        _check_compatible(study, opt)
    except KeyError:
        try:
            study = optuna.create_study(study_name=opt.study_name, storage=storage, pruner=opt.make_pruner(), direction=opt.direction)
            _label(study, opt)
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
            study = optuna.load_study(study_name=opt.study_name, storage=storage, pruner=opt.make_pruner())
            _check_compatible(study, opt)
    if study_uid(study) is None:
        _label(study, opt, wait=2.0)
    study.sampler = TrialSeededSampler(opt.make_sampler) if opt.seed_per_trial() else opt.make_sampler()
    return study


def study_uid(study: optuna.Study) -> str | None:
    # Optuna 5 keeps study system attributes out of the public Study API.
    return study._storage.get_study_system_attrs(study._study_id).get(STUDY_UID)


def _label(study: optuna.Study, opt: OptimizeConfig, wait: float = 0.0) -> None:
    """Give a study its random uid (its run folder's owner mark) and its metric's name
    (optuna-dashboard's label for the objective). ``wait``: a worker that loaded a study
    created a moment ago first gives its creator time to label it."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and study_uid(study) is None:
        time.sleep(0.1)
    if study_uid(study) is None:
        study._storage.set_study_system_attr(study._study_id, STUDY_UID, uuid.uuid4().hex)
    if study.metric_names is None:
        with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([opt.metric])


def _check_compatible(study: optuna.Study, opt: OptimizeConfig) -> None:
    stored = study.direction.name.lower()
    if stored != opt.direction:
        raise ConfigError("direction", opt.study_name, f"the existing study optimizes {stored} but the config says {opt.direction}", "use the stored direction, or a new study_name")
    new = opt.distributions()
    for t in reversed(study.get_trials(deepcopy=False)):
        for name, old in t.distributions.items():
            if name in new:
                try:
                    optuna.distributions.check_distribution_compatibility(old, new[name])
                except ValueError as exc:
                    key = next(p.where for p in opt.params if p.name == name)
                    raise ConfigError("search_space", key, f"changed incompatibly since the study began ({exc})", "restore the old definition, or use a new study_name") from None
        if t.distributions:
            break


def _system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    # Bookkeeping for this tool, kept out of the user attributes dashboards show.
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)


def make_objective(run: RunConfig, opt: OptimizeConfig, settings: TuneSettings, folder: Path) -> Callable[[optuna.Trial], float]:
    """The objective: merge the trial's parameters into ``run``, train every seed into
    ``folder/<group>[<trial>]/<seed>``, return the seeds' mean."""
    from optuna_integration import PyTorchLightningPruningCallback

    from lightning_hpo.pruner import EPOCHS_ATTR, N_SEEDS_ATTR
    from lightning_hpo.training import fit_run

    mode = "min" if opt.direction == "minimize" else "max"

    def train_trial(trial: optuna.Trial) -> float:
        if counted(trial.study.get_trials(deepcopy=False), before=trial.number) >= opt.trials:
            # Another worker took the last slot between our count and our ask: the
            # lower trial numbers win, this one ends without running.
            _system_attr(trial, SURPLUS, True)
            trial.set_user_attr(FAIL_REASON, f"not run: the study already holds its {opt.trials} trials")
            trial.study.stop()
            raise TrialFailed("surplus")
        _system_attr(trial, HOST, socket.gethostname())
        _system_attr(trial, PID, os.getpid())
        cfg = opt.suggest(trial, run)
        cfg.project = study_project(run)
        group = f"{cfg.group_name()}[{trial.number}]"
        run_dir = folder / group
        trial.set_user_attr(GROUP_NAME, group)
        trial.set_user_attr(RUN_DIR, str(run_dir))
        trial.set_user_attr(EPOCHS_ATTR, cfg.epochs)
        trial.set_user_attr(N_SEEDS_ATTR, len(cfg.seeds))
        callback = PyTorchLightningPruningCallback(trial, monitor=opt.metric)
        try:
            results = fit_run(
                cfg, cfg.seeds, [run_dir / str(seed) for seed in cfg.seeds], monitor=opt.metric, mode=mode,
                callbacks=[callback], progress_bar=settings.progress_bar, after_fit=callback.check_pruned,
            )
        except (optuna.TrialPruned, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - any training error fails this trial only
            reason = f"{exc.__class__.__name__}: {exc}".strip()
            trial.set_user_attr(FAIL_REASON, reason[:2000])
            raise TrialFailed(reason) from exc
        value = statistics.fmean(r.final for r in results)
        if not math.isfinite(value):
            reason = f"{opt.metric} ended at {value}"
            trial.set_user_attr(FAIL_REASON, reason)
            raise TrialFailed(reason)
        return value

    def objective(trial: optuna.Trial) -> float:
        try:
            return train_trial(trial)
        except (KeyboardInterrupt, SystemExit) as exc:
            # Lightning turns Ctrl-C and SIGTERM into SystemExit, which Optuna would leave RUNNING.
            ignore_further_signals()  # a second signal must not break the writes that end the trial
            _system_attr(trial, INTERRUPTED, True)
            trial.set_user_attr(FAIL_REASON, f"interrupted by {signal.Signals(last_signal()).name}: not counted, the next run of the study runs it again")
            raise KeyboardInterrupt(str(exc)) from exc

    return objective


_STUDY_MARK = ".study"  # in a study's run folder: the uid of the study that owns it


def study_folder(run: RunConfig, opt: OptimizeConfig, study: optuna.Study, settings: TuneSettings, echo: Callable[[str], None] = print) -> Path:
    """``runs/<project>_Opt/<study_name>``: this study's trials and ``best.yaml``, and no other's.

    The folder carries the uid of the study that owns it. A folder of the same name that
    another study owns (a database deleted to start over, another storage, another
    machine's study on a shared disk) is never written into: the next free
    ``<study_name>.2``, ``.3``, ... is used instead, and the command says so.
    """
    uid = study_uid(study)
    base = Path(settings.runs_root) / study_project(run)
    name = folder_name(opt.study_name)
    for k in itertools.count(1):
        folder = base / (name if k == 1 else f"{name}.{k}")
        if _claim(folder, uid):
            if k > 1:
                note = f"{base / name} belongs to another study named {opt.study_name!r} (a deleted database, or another storage): this study writes to {folder}"
                if note not in _said:
                    _said.add(note)
                    echo(f"note: {note}")
            return folder
    raise AssertionError("unreachable")


_said: set[str] = set()


def folder_name(study_name: str) -> str:
    """A study name as a folder name: anything but letters, digits and ``.-+=_`` becomes ``-``."""
    return re.sub(r"[^\w.\-+=]", "-", study_name)


def report_folder(run: RunConfig, opt: OptimizeConfig, runs_root: str | Path) -> Path:
    """Where ``tune.py report`` puts a study's plots: ``runs/<project>_Opt/reports/<study_name>``,
    beside the trial folders, so a report never writes into a folder a study owns."""
    return Path(runs_root) / study_project(run) / "reports" / folder_name(opt.study_name)


def _claim(folder: Path, uid: str) -> bool:
    """Whether ``folder`` is (now) the run folder of the study ``uid``."""
    mark = folder / _STUDY_MARK
    folder.mkdir(parents=True, exist_ok=True)
    if not mark.exists() and any(p.name != _STUDY_MARK for p in folder.iterdir()):
        return False  # someone's files, no owner mark: not ours to write into
    try:
        with open(mark, "x") as fh:  # exclusive: of two studies racing for it, one wins
            fh.write(uid)
        return True
    except FileExistsError:
        return mark.read_text().strip() == uid


def best_config(run: RunConfig, opt: OptimizeConfig, study: optuna.Study) -> RunConfig:
    """The run config with the best trial's parameters merged in."""
    return opt.merge(run, study.best_trial.params)




class Progress:
    """One line per finished trial, with the study's running counts and best value."""

    def __init__(self, opt: OptimizeConfig, echo: Callable[[str], None]):
        self.opt, self.echo = opt, echo

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.system_attrs.get(SURPLUS):
            return
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        counts = f"done {states.count(TrialState.COMPLETE)}, pruned {states.count(TrialState.PRUNED)}, failed {states.count(TrialState.FAIL)}"
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        if trial.state == TrialState.COMPLETE:
            outcome = f"{self.opt.metric} {trial.value:.5g}"
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned at step {trial.last_step} ({self.opt.metric} {_fmt(trial.intermediate_values.get(trial.last_step))})"
        else:
            outcome = "FAILED: " + (trial.user_attrs.get(FAIL_REASON) or ("interrupted" if trial.system_attrs.get(INTERRUPTED) else "unknown"))
        try:
            best = f"best {study.best_value:.5g} (trial {study.best_trial.number})"
        except ValueError:
            best = "best -"
        self.echo(f"[{counted(trials)}/{self.opt.trials}] trial {trial.number} {outcome} | {params} | {counts} | {best}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


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


_received: list[int] = []  # the signals that interrupted this process, in order


def interrupt_on_signals() -> None:
    """Make SIGTERM (kill, schedulers, docker stop) stop a study the way Ctrl-C does, and
    remember which one came (``last_signal``: the exit status is 128 + its number).

    Lightning keeps a handler that is already installed, so a signal during ``fit`` also
    arrives as KeyboardInterrupt and fails the running trial cleanly.
    """

    def interrupt(signum, frame):
        record_signal(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def record_signal(signum: int) -> None:
    _received.append(signum)


def last_signal() -> int:
    """The signal that interrupted this process; SIGINT when none was recorded (Ctrl-C
    under Python's own handler)."""
    return _received[-1] if _received else signal.SIGINT


def ignore_further_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def restored_signal_handlers():
    """Undo ``ignore_further_signals`` when the study returns, for programs that call tune()."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def fail_dead_trials(study: optuna.Study, echo: Callable[[str], None] = print) -> None:
    """Before counting what remains: fail the trials of dead workers, so they are run again.

    On this host a RUNNING trial whose process is gone is failed and queued again; on RDB
    storages Optuna's heartbeat check fails silent trials of any host and retries them once.
    """
    for number in fail_dead_workers(study):
        echo(f"trial {number} was left RUNNING by a worker that died: marked FAIL, its parameters queued again")
    with warnings.catch_warnings():  # fail_stale_trials is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def no_trial_completed(study: optuna.Study) -> str | None:
    """One line saying why no trial completed (with the commonest failure reason), or None
    when one did."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return None
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.system_attrs.get(SURPLUS)]
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    line = f"no trial completed: {len(failed)} failed, {pruned} pruned"
    reasons = collections.Counter(t.user_attrs.get(FAIL_REASON, "no reason recorded") for t in failed)
    if reasons:
        reason, n = reasons.most_common(1)[0]
        line += f"; commonest failure ({n} of {len(failed)}): {reason.splitlines()[0][:300]}"
    return line


def remaining(study: optuna.Study, total: int) -> int:
    return max(0, total - counted(study.get_trials(deepcopy=False)))


def tune(run: RunConfig, opt: OptimizeConfig, settings: TuneSettings | None = None, echo: Callable[[str], None] = print) -> optuna.Study:
    """Run (or continue) the study until it holds ``opt.trials`` trials; return it.

    Rerunning continues: only missing trials run. Trials interrupted by Ctrl-C/SIGTERM or
    left behind by a dead worker do not count and are run again.
    """
    settings = settings or TuneSettings()
    study = create_or_load_study(run, opt, settings)
    fail_dead_trials(study, echo)
    todo = remaining(study, opt.trials)
    if settings.max_trials is not None:
        todo = min(todo, settings.max_trials)
    if todo > 0:
        folder = study_folder(run, opt, study, settings, echo)
        with restored_signal_handlers():
            study.optimize(
                make_objective(run, opt, settings, folder),
                n_trials=todo,
                catch=(TrialFailed,),
                callbacks=[collect_and_freeze, Progress(opt, echo), StopAtTotal(opt.trials)],
            )
    return study


def finish(run: RunConfig, opt: OptimizeConfig, study: optuna.Study, settings: TuneSettings, echo: Callable[[str], None] = print) -> Path | None:
    """Print the reference's "Best trial" block and write best.yaml. None when no trial completed."""
    try:
        best = study.best_trial
    except ValueError:
        echo("No trial completed, so there is no best trial.")
        return None
    echo("Best trial:")
    echo(f"  Number: {best.number}")
    echo(f"  Value: {best.value:.6g} ({opt.metric}, {opt.direction})")
    echo("  Params:")
    for k, v in best.params.items():
        echo(f"    {k}: {_fmt(v)}")
    echo(f"  Path: {best.user_attrs.get(RUN_DIR, '?')}")
    path = study_folder(run, opt, study, settings, echo) / "best.yaml"
    dump_yaml(best_config(run, opt, study).to_dict(), path)
    echo(f"Best config: {path}  (python train.py --config {path})")
    url = settings.storage or default_url(run.project)
    echo(f"Study: {redact(url)}  ({dashboard_command(url)})")
    return path


def quiet_optuna(debug: bool = False) -> None:
    """Our per-trial line replaces Optuna's; keep its warnings only with --debug."""
    optuna.logging.set_verbosity(optuna.logging.WARNING if debug else optuna.logging.ERROR)
    if not debug:
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sys.stdout.reconfigure(line_buffering=True)
