"""A live worker is not taken for dead: a storage error on a heartbeat is noted once and
the beats go on, on both heartbeats (ours and Optuna's RDB one)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lightning_hpo.attrs import BEAT
from lightning_hpo.tuning.liveness import Heartbeat, why_dead

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
