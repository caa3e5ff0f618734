"""Trials signed by their worker from their first write: the worker's host, PID and process
start time (system attrs), and its SLURM job (user attr ``slurm_job_id``) where it runs in
one, so a worker that dies at any moment leaves a trial that others can tell is dead
(``tuning.liveness``, and the SLURM launcher, which sees the job end).

Optuna creates a trial (``study.ask``), then samples its parameters, then runs the
objective. A worker that signed its trial in the objective left an unsigned RUNNING trial
when it was killed in between, and nothing could tell whose it was until a grace period had
passed. Here the storage signs it: a new trial carries the signature in the same write that
creates it; a queued trial (a retry, ``enqueue_trial``) is signed right after this worker
claims it, before anything else is done with it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime

from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from lightning_hpo.attrs import HOST, PID, SLURM_JOB_ATTR, STARTED
from lightning_hpo.tuning.signals import signals_held


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (``/proc/<pid>/stat``'s start time, in clock ticks since
    boot), or None where that cannot be read (no /proc, or no such process)."""
    status = process_status(pid)
    return None if status is None else status[1]


def process_status(pid: int) -> tuple[str, str] | None:
    """Process ``pid``'s state (``Z``: a zombie, ended but not yet waited for by its parent)
    and start time, read at once from ``/proc/<pid>/stat``; None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def worker_identity() -> dict[str, object]:
    """This process as the worker of a trial: host, PID and start time."""
    return {HOST: socket.gethostname(), PID: os.getpid(), STARTED: process_start(os.getpid())}


def slurm_job() -> str | None:
    """The SLURM job this process runs in: ``<array>_<task>`` for a task of a job array,
    else the job id; None outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _job() -> dict[str, object]:
    job = slurm_job()
    return {SLURM_JOB_ATTR: job} if job else {}


def signed(template_trial: FrozenTrial | None) -> FrozenTrial | None:
    """The template of a trial this process creates: ``study.ask``'s new trial (no template)
    as a RUNNING one signed by this worker; ``add_trial``'s own template unchanged."""
    if template_trial is not None:
        return template_trial
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=_job(),
        system_attrs=worker_identity(),
        intermediate_values={},
        trial_id=-1,
    )


class SignedClaims:
    """Storage mixin: a queued trial this process claims (WAITING to RUNNING) is signed by
    it at once. The storage's trial creation signs new trials through ``signed``."""

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if state != TrialState.RUNNING:
            return super().set_trial_state_values(trial_id, state, values)
        with signals_held():  # Ctrl-C comes once the claimed trial is signed
            claimed = super().set_trial_state_values(trial_id, state, values)
            if claimed:
                # The job first: a SLURM launcher that sees it end fails the trial.
                for key, value in _job().items():
                    self.set_trial_user_attr(trial_id, key, value)
                for key, value in worker_identity().items():
                    self.set_trial_system_attr(trial_id, key, value)
        return claimed


class SignedJournalStorage(SignedClaims, JournalStorage):
    """Optuna's ``JournalStorage``, its trials signed by their worker."""

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return super().create_new_trial(study_id, signed(template_trial))
