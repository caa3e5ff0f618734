"""The study itself: create or load it (and check it still fits the config), count its
trials, fail the trials of dead workers, and find its run folders.
"""

from __future__ import annotations

import collections
import itertools
import re
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from lightning_hpo.attrs import (
    FAIL_REASON,
    INTERRUPTED,
    PROVENANCE,
    PRUNER_ATTR,
    RETRIED_FROM,
    STALE,
    STUDY_UID,
    SURPLUS,
)
from lightning_hpo.config.optimize import OptimizeConfig
from lightning_hpo.config.run import RunConfig
from lightning_hpo.console import note_once
from lightning_hpo.errors import ConfigError
from lightning_hpo.storage.connect import default_url, open_storage
from lightning_hpo.training import provenance


@dataclass
class TuneOptions:
    """Where and how a study runs: ``tune.py``'s options, by their long names (``--storage``,
    ``--output``, ``--progress``, ``--heartbeat``). What the study searches is the optimize
    config's."""

    storage: str | None = None  # default: sqlite:///<project>_Opt.db
    output: str = "runs"
    progress: bool = False  # Lightning's per-batch bars
    heartbeat: int | None = 30  # seconds between a worker's heartbeats (tuning.liveness); None: off


STUDY_SUFFIX = "_Opt"  # a study's trials train in project <project>_Opt


def study_project(run: RunConfig) -> str:
    return f"{run.project}{STUDY_SUFFIX}"


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


def create_or_load_study(run: RunConfig, opt: OptimizeConfig, options: TuneOptions) -> optuna.Study:
    """Open the storage and create the study, or load it and check it still matches the config.

    A seeded sampler is reseeded from each trial's number, so a continued study or a
    second worker does not replay the first one's suggestions.
    """
    url = options.storage or default_url(run.project)
    storage = open_storage(url, heartbeat=options.heartbeat)
    try:
        study = optuna.load_study(
            study_name=opt.study_name, storage=storage, pruner=opt.make_pruner()
        )
        check_compatible(study, opt)
    except KeyError:
        try:
            study = optuna.create_study(
                study_name=opt.study_name,
                storage=storage,
                pruner=opt.make_pruner(),
                direction=opt.direction,
            )
            # Its creator's, once: a worker or a rerun that loads it leaves it as it is.
            study.set_user_attr(PROVENANCE, provenance.collect(run.device))
            _label(study, opt)
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
            study = optuna.load_study(
                study_name=opt.study_name, storage=storage, pruner=opt.make_pruner()
            )
            check_compatible(study, opt)
    if study_uid(study) is None:
        _label(study, opt, wait=2.0)
    if study.user_attrs.get(PRUNER_ATTR) != opt.pruner:  # what `tune.py report` replays
        study.set_user_attr(PRUNER_ATTR, opt.pruner)
    study.sampler = (
        TrialSeededSampler(opt.make_sampler) if opt.seed_per_trial() else opt.make_sampler()
    )
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
            study.set_metric_names([opt.value_name()])


def check_compatible(study: optuna.Study, opt: OptimizeConfig, fix: str | None = None) -> None:
    """A rerun under a study's name is the same study: the same metric, direction and
    search space. Anything else is refused before a trial runs, naming what changed.
    ``fix``: how to fix it, with ``{}`` for what to keep (default: keep it, or start a
    new study)."""
    where = f"study {opt.study_name!r}"
    fix = fix or (
        f"keep {{}}, or start a new study under another name (study_name, or --study-name "
        f"{opt.study_name}-2)"
    )
    stored = study.direction.name.lower()
    if stored != opt.direction:
        raise ConfigError(
            where,
            "direction",
            f"the existing study optimizes {stored} but the config says {opt.direction}",
            fix.format(f"direction: {stored}"),
        )
    metrics = study.metric_names
    if metrics and metrics != [opt.value_name()]:
        stored_metric, _, best = metrics[0].partition(" (best epoch)")
        changed, keep = (
            ("objective", f"objective: {'best' if best else 'last'}")
            if stored_metric == opt.metric
            else ("metric", f"metric: {stored_metric}")
        )
        raise ConfigError(
            where,
            changed,
            f"the existing study's values are {metrics[0]} but the config says "
            f"{opt.value_name()}: its trials would be ranked against each other",
            fix.format(keep),
        )
    new = opt.distributions()
    for t in reversed(study.get_trials(deepcopy=False)):
        for name, old in t.distributions.items():
            if name in new:
                try:
                    optuna.distributions.check_distribution_compatibility(old, new[name])
                except ValueError as exc:
                    key = next(p.where for p in opt.params if p.name == name)
                    raise ConfigError(
                        where,
                        key,
                        f"changed incompatibly since the study began ({exc})",
                        fix.format("the old definition"),
                    ) from None
        if t.distributions:
            break


def counting(
    trials: list[optuna.trial.FrozenTrial], before: int | None = None
) -> list[optuna.trial.FrozenTrial]:
    """The trials that count toward the study's total: finished, failed and running ones
    (only those numbered below ``before`` when given).

    Interrupted, surplus or dead-worker failures do not count (they are run again), nor
    do queued trials: a queued retry is the next trial a worker asks for, and fills a
    free slot.
    """
    retried = {t.system_attrs.get(RETRIED_FROM) for t in trials}
    return [
        t
        for t in trials
        if t.state != TrialState.WAITING
        and (before is None or t.number < before)
        and not (
            t.state == TrialState.FAIL
            and (
                t.system_attrs.get(INTERRUPTED)
                or t.system_attrs.get(STALE)
                or t.system_attrs.get(SURPLUS)
                or t.number in retried
            )
        )
    ]


def state_counts(trials: list[optuna.trial.FrozenTrial]) -> tuple[int, int, int]:
    """The study's trials done (complete), pruned and failed, as the progress line counts them."""
    states = [t.state for t in trials]
    return (
        states.count(TrialState.COMPLETE),
        states.count(TrialState.PRUNED),
        states.count(TrialState.FAIL),
    )


def counted(trials: list[optuna.trial.FrozenTrial], before: int | None = None) -> int:
    """How many trials count toward the study's total (``counting``)."""
    return len(counting(trials, before))


def finished_position(
    trials: list[optuna.trial.FrozenTrial], trial: optuna.trial.FrozenTrial
) -> int:
    """``trial``'s place among the counted trials that have finished, in the order they
    finished: each finished trial gets its own number, whichever worker reads it."""

    def finished(t: optuna.trial.FrozenTrial) -> tuple:
        return (t.datetime_complete, t.number)

    done = [t for t in counting(trials) if t.state.is_finished() and t.datetime_complete]
    if trial.datetime_complete is None:
        return len(done)
    return sum(finished(t) <= finished(trial) for t in done)


def no_trial_completed(study: optuna.Study) -> str | None:
    """One line saying why no trial completed (with the commonest failure reason), or None
    when one did."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.COMPLETE for t in trials):
        return None
    failed = [t for t in trials if t.state == TrialState.FAIL and not t.system_attrs.get(SURPLUS)]
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    line = f"no trial completed: {len(failed)} failed, {pruned} pruned"
    reasons = collections.Counter(
        t.user_attrs.get(FAIL_REASON, "no reason recorded") for t in failed
    )
    if reasons:
        reason, n = reasons.most_common(1)[0]
        line += f"; commonest failure ({n} of {len(failed)}): {reason.splitlines()[0][:300]}"
    return line


def remaining(study: optuna.Study, total: int) -> int:
    return max(0, total - counted(study.get_trials(deepcopy=False)))


_STUDY_MARK = ".study"  # in a study's run folder: the uid of the study that owns it


def study_folder(
    run: RunConfig,
    opt: OptimizeConfig,
    study: optuna.Study,
    options: TuneOptions,
    echo: Callable[[str], None] = print,
) -> Path:
    """``runs/<project>_Opt/<study_name>``: this study's trials and ``best.yaml``, and no other's.

    The folder carries the uid of the study that owns it. A folder of the same name that
    another study owns (a database deleted to start over, another storage, another
    machine's study on a shared disk) is never written into: the next free
    ``<study_name>.2``, ``.3``, ... is used instead, and the command says so.
    """
    if study_uid(study) is None:  # a study made without create_or_load_study (Python callers)
        _label(study, opt)
    uid = study_uid(study)
    base = Path(options.output) / study_project(run)
    name = folder_name(opt.study_name)
    for k in itertools.count(1):
        folder = base / (name if k == 1 else f"{name}.{k}")
        if _claim(folder, uid):
            if k > 1:
                note_once(
                    f"{base / name} belongs to another study named {opt.study_name!r} "
                    f"(a deleted database, or another storage): this study writes to {folder}",
                    echo,
                )
            return folder
    raise AssertionError("unreachable")


def folder_name(study_name: str) -> str:
    """A study name as a folder name: anything but letters, digits and ``.-+=_`` becomes ``-``."""
    return re.sub(r"[^\w.\-+=]", "-", study_name)


def report_folder(project_folder: str, study_name: str, output: str | Path) -> Path:
    """Where ``tune.py report`` puts a study's plots: ``runs/<project>_Opt/reports/<study_name>``
    (``project_folder``: ``<project>_Opt``), beside the trial folders, so a report never
    writes into a folder a study owns."""
    return Path(output) / project_folder / "reports" / folder_name(study_name)


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
