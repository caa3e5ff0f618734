"""A live worker is not taken for dead, and one that was all the same does not crash: a
storage error on a heartbeat is noted once and the beats go on, on both heartbeats (ours
and Optuna's RDB one); a worker whose trial another worker failed and queued again
meanwhile drops that trial in one line and goes on with the next."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lightning_hpo.attrs import BEAT, FAIL_REASON, INTERRUPTED, RETRY_OF
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, run_config_from_dict
from lightning_hpo.training import runs
from lightning_hpo.tuning.liveness import Heartbeat, fail_dead_workers, why_dead
from lightning_hpo.tuning.study import TuneOptions, counted
from lightning_hpo.tuning.tuner import tune

pytestmark = pytest.mark.usefixtures("quiet")

HICCUP = "server closed the connection unexpectedly"


class Intervals:
    """A heartbeat's stop event that lets ``n`` intervals pass, then stops it, at once."""

    def __init__(self, n: int):
        self.n = n

    def wait(self, timeout: float | None = None) -> bool:
        self.n -= 1
        return self.n < 0


def test_a_storage_error_on_a_heartbeat_is_noted_once_and_the_beats_go_on(
    monkeypatch, capsys
) -> None:
    study = optuna.create_study()
    trial = study.ask()
    real = study._storage.set_trial_system_attr
    beats: list[float] = []

    def flaky(trial_id: int, key: str, value) -> None:
        beats.append(value)
        if len(beats) in (2, 3):  # two beats in a row meet a storage hiccup
            raise RuntimeError(f"{HICCUP}\n\tThis probably means the server terminated")
        real(trial_id, key, value)

    monkeypatch.setattr(study._storage, "set_trial_system_attr", flaky)
    heartbeat = Heartbeat(trial, interval=30)
    heartbeat._stop = Intervals(5)
    heartbeat._run()  # the beating thread's loop, here
    assert len(beats) == 5  # one per interval, through the errors
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.system_attrs[BEAT] == beats[-1]
    assert why_dead(frozen, grace=90, now=beats[-1] + 1) is None
    assert capsys.readouterr().err.splitlines() == [
        f"note: trial 0: a heartbeat could not be written (RuntimeError: {HICCUP}); the trial "
        "goes on, and its heartbeat tries again every 30 s"
    ]


def test_a_heartbeat_ends_with_its_trial() -> None:
    study = optuna.create_study()
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)  # another worker took it for dead
    heartbeat = Heartbeat(trial, interval=30)
    heartbeat._stop = stop = Intervals(5)
    heartbeat._run()
    assert stop.n == 4  # one interval, one refused beat, and it ended


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_optuna_s_rdb_heartbeat_survives_a_storage_error(tmp_path: Path, monkeypatch, capsys):
    from optuna.storages import RDBStorage
    from optuna.storages._heartbeat import HeartbeatThread

    from lightning_hpo.storage.connect import open_storage

    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat=30)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    real = RDBStorage.record_heartbeat
    beats: list[int] = []

    def flaky(self, trial_id: int) -> None:
        beats.append(trial_id)
        if len(beats) == 2:
            raise RuntimeError(HICCUP)
        real(self, trial_id)

    monkeypatch.setattr(RDBStorage, "record_heartbeat", flaky)
    # Optuna's heartbeat thread's loop, here: it ended at the first error.
    HeartbeatThread._record_heartbeat(trial._trial_id, storage, Intervals(3))
    assert len(beats) == 4
    assert capsys.readouterr().err.splitlines() == [
        f"note: trial 0: a heartbeat could not be written (RuntimeError: {HICCUP}); the trial "
        "goes on, and its heartbeat tries again every 30 s"
    ]


# --------------------------------------------------------------------------- taken over

RUN = {
    "project": "Live",
    "device": "cpu",
    "seeds": [1],
    "epochs": 3,
    "batch_size": 128,
    "data_config": {"n": 300},
    "net_config": {"nodes": 8, "layers": 1},
}
SILENT = "its worker (pid 4242 on elsewhere) sent no heartbeat for 95 s"
TAKEN_OVER = (
    f"note: trial 0 was taken over: {SILENT}: failed, and its parameters queued once more; "
    "this worker dropped it"
)


def take_over(study: optuna.Study) -> None:
    """What another worker does to a trial whose worker it takes for dead (here, this one's)."""
    assert fail_dead_workers(study, dead=lambda trial: SILENT) == [0]


def settings(tmp_path: Path) -> tuple:
    run = build(run_config_from_dict(RUN, "<test run>"), "<test run>")
    opt = optimize_config_from_dict(
        {
            "study_name": "live",
            "trials": 1,
            "seed": 1,
            "pruner": None,
            "search_space": {
                "optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-2}}
            },
        },
        run,
        "<test optimize>",
    )
    options = TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))
    return run, opt, options


def taken_over_during_the_first_trial(monkeypatch, studies: list, when: str) -> None:
    """Make another worker take the first trial over ``when``: while it trains (after its
    first epoch), after its last epoch (before Optuna is told its value), or before a
    Ctrl-C reaches this worker."""
    real = runs.fit_run
    calls: list[int] = []

    def fit_run(cfg, seeds, run_dirs, options, **kwargs):
        calls.append(len(calls))
        if len(calls) > 1:  # the trials after it
            return real(cfg, seeds, run_dirs, options, **kwargs)
        if when == "while it trains":

            def on_epoch(epoch: int, values: dict) -> None:
                if epoch == 1:
                    take_over(studies[0])

            options = dataclasses.replace(options, on_epoch=on_epoch)
            return real(cfg, seeds, run_dirs, options, **kwargs)
        if when == "before a Ctrl-C":
            take_over(studies[0])
            raise KeyboardInterrupt
        results = real(cfg, seeds, run_dirs, options, **kwargs)
        take_over(studies[0])
        return results

    monkeypatch.setattr(runs, "fit_run", fit_run)


@pytest.mark.parametrize("when", ["while it trains", "after its last epoch"])
def test_a_trial_taken_over_is_dropped_in_one_line_and_the_worker_goes_on(
    tmp_path: Path, monkeypatch, when: str
) -> None:
    run, opt, options = settings(tmp_path)
    studies: list[optuna.Study] = []
    taken_over_during_the_first_trial(monkeypatch, studies, when)
    lines: list[str] = []
    study = tune(run, opt, options, echo=lines.append, on_study=studies.append)
    dropped, retry = study.get_trials()
    # The other worker's verdict stands: failed, not counted, its parameters queued.
    assert dropped.state == TrialState.FAIL
    assert (
        dropped.user_attrs[FAIL_REASON] == f"{SILENT}: failed, and its parameters queued once more"
    )
    assert lines[0] == TAKEN_OVER and not any(
        line.startswith("[") and "trial 0 " in line for line in lines
    )
    # This worker went on: it pulled the queued copy and finished the study.
    assert retry.state == TrialState.COMPLETE and retry.user_attrs[RETRY_OF] == 0
    assert retry.params == dropped.params
    assert counted(study.get_trials()) == opt.trials
    assert "(retry of trial 0, " in lines[1]


def test_a_trial_taken_over_between_its_seeds_trains_no_further_seed(
    tmp_path: Path, monkeypatch
) -> None:
    _run, opt, options = settings(tmp_path)
    spec = RUN | {"seeds": [1, 2, 3], "fuse_seeds": False}
    run = build(run_config_from_dict(spec, "<test run>"), "<test run>")
    studies: list[optuna.Study] = []
    real, trained = runs.fit_seed, []

    def fit_seed(cfg, seed, run_dir, *args, **kwargs):
        trained.append((Path(run_dir).parent.name, seed))  # the group: "...[<trial>]"
        result = real(cfg, seed, run_dir, *args, **kwargs)
        if len(trained) == 2:  # another worker takes trial 0 over during its second seed
            take_over(studies[0])
        return result

    monkeypatch.setattr(runs, "fit_seed", fit_seed)
    lines: list[str] = []
    study = tune(run, opt, options, echo=lines.append, on_study=studies.append)
    # Trial 0 stopped after the seed it was taken over in; its retry kept the two seeds
    # that had finished and trained the third.
    assert [seed for group, seed in trained if group.endswith("[0]")] == [1, 2]
    assert [seed for group, seed in trained if group.endswith("[1]")] == [3]
    assert lines[0] == TAKEN_OVER
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_trial_taken_over_before_a_ctrl_c_is_dropped_and_the_worker_stops(
    tmp_path: Path, monkeypatch
) -> None:
    run, opt, options = settings(tmp_path)
    studies: list[optuna.Study] = []
    taken_over_during_the_first_trial(monkeypatch, studies, "before a Ctrl-C")
    lines: list[str] = []
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt):
        tune(run, opt, options, echo=lines.append, on_study=studies.append)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert lines == [TAKEN_OVER]
    dropped, queued = studies[0].get_trials()
    assert dropped.state == TrialState.FAIL and INTERRUPTED not in dropped.system_attrs
    assert queued.state == TrialState.WAITING  # queued once, by the worker that took it over


def test_a_dead_worker_s_trial_is_not_taken_for_this_one_s_though_its_pid_is_the_same() -> None:
    # A restarted container: the same host name, the same PID, another process.
    import os
    import socket

    from lightning_hpo.attrs import HOST, PID, STARTED
    from lightning_hpo.storage.signed import process_start
    from lightning_hpo.tuning.liveness import release_own_trials

    study = optuna.create_study()
    old, mine = study.ask(), study.ask()
    for trial, started in ((old, "1"), (mine, process_start(os.getpid()))):
        for key, value in ((HOST, socket.gethostname()), (PID, os.getpid()), (STARTED, started)):
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
    assert release_own_trials(study) == [mine.number]
    assert "died" in why_dead(study.trials[old.number], grace=None)
    assert fail_dead_workers(study) == [old.number]


def test_a_held_signal_waits_and_a_second_one_stops_at_once() -> None:
    import os

    from lightning_hpo.tuning.signals import (
        hold_signals,
        interrupt_on_signals,
        release_signals,
        restored_signal_handlers,
    )

    with restored_signal_handlers():
        interrupt_on_signals()
        hold_signals()
        os.kill(os.getpid(), signal.SIGTERM)  # held: nothing raised here
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: out at once
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            release_signals()  # the first one, once what it waited for is done
        release_signals()  # nothing held any more
