"""Is a trial's worker alive? What a worker records to say so, and failing the trials of
dead ones, so they are run again.

Each trial carries its worker from its first write (system attrs, ``storage.signed``): its
host, its PID and its process's start time; and, every ``interval`` seconds while the trial
runs, a heartbeat (``Heartbeat``). A RUNNING trial's worker is dead when:

- on this host, its PID is gone, has ended (a zombie its parent has not yet waited for), or
  belongs to a process that started at another time (a recycled PID is not the worker);
- on any host, its last heartbeat (or, before the first, its start) is older than the
  grace period: a worker killed on another machine, or a trial no worker signed (created
  by another tool).

RDB storages also have Optuna's own heartbeat, which fails silent trials the same way; the
two agree, and whichever marks a trial first wins. A storage error on a beat (a lost
connection, a lock timeout) is noted once and the heartbeat goes on: it is not silence.

A worker that was silent all the same (a network partition longer than the grace period)
finds its trial finished by another worker when it next reports or ends it
(``TrialTakenOver``): it drops that trial, says so in one line and goes on with the next;
the copy the other worker queued stands.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from lightning_hpo.attrs import BEAT, FAIL_REASON, HOST, INTERRUPTED, PID, STALE, STARTED
from lightning_hpo.console import note_once
from lightning_hpo.storage.signed import process_status, worker_identity
from lightning_hpo.storage.stale import missed_beat, queue_retry
from lightning_hpo.tuning.signals import last_signal

GRACE_BEATS = 3  # heartbeats a worker may miss before its trial is taken for dead
REQUEUED = "marked FAIL, its parameters queued again"  # said of each trial a dead worker left


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` runs, and is the one that started at ``started`` (when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    status = process_status(pid)
    if status is None:  # no /proc: the signal's answer stands
        return True
    state, now = status
    if state in ("Z", "X"):  # killed, not yet waited for by its parent
        return False
    return started is None or now == started


class Heartbeat:
    """While a trial runs, write the time on it every ``interval`` seconds (system attr), so
    a worker that dies on any host, on any storage, is found.

    A beat the storage fails to write is tried again at the next one (a storage's hiccup is
    not a dead worker), noted once per trial through ``note``. Beating ends when the trial is
    finished: another worker took this one for dead (``TrialTakenOver``)."""

    def __init__(
        self, trial: optuna.Trial, interval: float, note: Callable[[str], None] = note_once
    ):
        self.trial, self.interval, self.note = trial, interval, note
        self._missed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="lightning-hpo-heartbeat", daemon=True
        )

    def _beat(self) -> bool:
        """Write the time on the trial; False once the trial is finished (nothing to beat for)."""
        try:
            self.trial.storage.set_trial_system_attr(self.trial._trial_id, BEAT, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # the objective finds out at its next report (TrialTakenOver)
        except Exception as exc:  # noqa: BLE001 - a storage hiccup: the next beat tries again
            if not self._missed:
                self._missed = True
                self.note(missed_beat(f"trial {self.trial.number}", exc, self.interval))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._beat():
                return

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class TrialTakenOver(BaseException):
    """The trial this worker runs was finished meanwhile by another worker, which took this
    one for dead (no heartbeat within the grace period) and queued its parameters again: the
    queued copy stands, and this worker drops the trial and goes on with the next.

    A BaseException, as KeyboardInterrupt is: ``study.optimize`` catches every Exception of
    the objective to tell the trial its outcome, and refuses to tell a finished trial
    (``ValueError: Cannot tell a FAIL trial``, a traceback); this one passes it by, to the
    tuner (``tuning.tuner.tune``), which says so in one line and asks for the next trial.
    ``interrupted``: a signal came too (Ctrl-C, SIGTERM); the tuner stops after the line.
    """

    def __init__(self, number: int, why: str, interrupted: bool = False):
        super().__init__(f"trial {number} was taken over: {why}; this worker dropped it")
        self.interrupted = interrupted


def check_still_ours(trial: optuna.Trial, interrupted: bool = False) -> None:
    """Raise ``TrialTakenOver`` when ``trial``, which this worker runs, is no longer RUNNING:
    another worker finished it, and its ``fail_reason`` says why. ``interrupted``: a signal
    came too."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    if frozen.state != TrialState.RUNNING:
        why = frozen.user_attrs.get(FAIL_REASON) or f"another worker marked it {frozen.state.name}"
        raise TrialTakenOver(trial.number, why, interrupted)


def mark_interrupted(study: optuna.Study, trial_id: int) -> None:
    """Mark this worker's RUNNING trial as interrupted by the signal that came (Ctrl-C,
    SIGTERM, SLURM's warning before a time limit), not counted, and queue its parameters:
    the next run (a requeued job) continues it from its checkpoints. Its state is left to
    the caller (Optuna's tell)."""
    storage = study._storage
    storage.set_trial_system_attr(trial_id, INTERRUPTED, True)
    storage.set_trial_user_attr(
        trial_id,
        FAIL_REASON,
        f"interrupted by {signal.Signals(last_signal()).name}: not counted; its "
        "parameters are queued, and the next run of the study continues it",
    )
    queue_retry(study, storage.get_trial(trial_id), once=False)


def release_own_trials(study: optuna.Study) -> list[int]:
    """On an interrupt outside any objective (in ``study.ask``, in a callback): fail the
    trials this process signed that are still RUNNING as interrupted, so none is left for a
    grace period or a next run to find. Returns their numbers."""
    me = worker_identity()
    released = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if any(t.system_attrs.get(key) != value for key, value in me.items()):
            continue
        try:
            mark_interrupted(study, t._trial_id)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker took it for dead meanwhile
        released.append(t.number)
    return released


def why_dead(trial: FrozenTrial, grace: float | None, now: float | None = None) -> str | None:
    """Why ``trial``'s (RUNNING) worker is taken for dead, or None while it may live.

    ``grace``: seconds without a heartbeat after which a worker on any host is dead (None:
    only this host's processes are checked).
    """
    attrs = trial.system_attrs
    host, pid = attrs.get(HOST), attrs.get(PID)
    if host == socket.gethostname() and pid is not None:
        # This process too: its PID in a restarted container may be a dead one's.
        if not process_alive(pid, attrs.get(STARTED)):
            return f"its worker (pid {pid} on this host) died"
        return None
    if grace is None:
        return None
    now = time.time() if now is None else now
    last = attrs.get(BEAT)
    if last is None and trial.datetime_start is not None:
        last = trial.datetime_start.timestamp()
    if last is not None and now - last > grace:
        where = f"pid {pid} on {host}" if host else "no worker signed it"
        return f"its worker ({where}) sent no heartbeat for {now - last:.0f} s"
    return None


def fail_dead_workers(
    study: optuna.Study,
    grace: float | None = None,
    now: float | None = None,
    dead: Callable[[FrozenTrial], str | None] | None = None,
) -> list[int]:
    """Mark RUNNING trials whose worker is dead (``why_dead``, or ``dead`` where given: why
    the trial's worker is known dead, None while it may live) as FAIL with the reason, and
    queue their parameters once more. Live workers' trials are never touched.

    A worker killed as it failed its interrupted trial (``mark_interrupted`` written, the
    FAIL not yet) keeps its reason, and its trial is queued as an interrupted one is."""
    dead = dead or (lambda t: why_dead(t, grace, now))
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = dead(t)
        if why is None:
            continue
        interrupted = bool(t.system_attrs.get(INTERRUPTED))
        try:
            if not interrupted:
                study._storage.set_trial_system_attr(t._trial_id, STALE, True)
                study._storage.set_trial_user_attr(
                    t._trial_id, FAIL_REASON, f"{why}: failed, and its parameters queued once more"
                )
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker got there first
        failed.append(t.number)
        queue_retry(study, t, once=not interrupted)  # once, and never a retry of a retry
    return failed


def fail_dead_trials(
    study: optuna.Study,
    echo: Callable[[str], None] = print,
    heartbeat: float | None = None,
) -> None:
    """Before counting what remains: fail the trials of dead workers, so they are run again.

    ``heartbeat``: the workers' heartbeat interval in seconds (``--heartbeat``); a trial
    silent for ``GRACE_BEATS`` of them is dead whatever its host. On RDB storages Optuna's
    own heartbeat check runs too.
    """
    grace = GRACE_BEATS * heartbeat if heartbeat else None
    for number in fail_dead_workers(study, grace):
        echo(f"trial {number} was left RUNNING by a worker that died: {REQUEUED}")
    with warnings.catch_warnings():  # fail_stale_trials is "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
