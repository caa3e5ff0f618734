"""Trials of dead workers: failed with a reason a user can see, and run once more.

Optuna's RDB heartbeat marks a silent worker's trial FAIL and hands it to a stale-trial
callback. Optuna's own ``RetryHeartbeatStaleTrialCallback`` copies the dead trial's
system and user attributes into the retry: its host, PID and PFL predictions. A worker
starting on that host before the retry has written its own PID could then take the
retry for a dead worker's trial. ``RetryOnce`` queues the parameters and the link back,
nothing else.
"""

from __future__ import annotations

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from lightning_hpo.attrs import FAIL_REASON, RETRIED_FROM, RETRY_OF

STALE_REASON = "its worker stopped sending heartbeats (killed, or its machine lost): failed, and its parameters queued once more"


def queue_retry(study: optuna.Study, trial: FrozenTrial, once: bool = True) -> bool:
    """Queue ``trial``'s parameters once more; with ``once``, not when it is itself a retry
    (a trial that kills its worker is not run forever). True if queued."""
    if once and (RETRY_OF in trial.user_attrs or RETRIED_FROM in trial.system_attrs):
        return False
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={RETRY_OF: trial.number},
            system_attrs={RETRIED_FROM: trial.number},
        )
    )
    return True


class RetryOnce:
    """Optuna's stale-trial callback: a heartbeat-stale trial runs once more, clean."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        queue_retry(study, trial)


class LabelledRDBStorage(RDBStorage):
    """``RDBStorage`` that writes ``fail_reason`` on a heartbeat-stale trial before Optuna
    fails it (a finished trial's attributes can no longer change), so the dashboard
    shows why it failed. Optuna looks stale trials up through ``_get_stale_trial_ids``
    wherever it fails them, in ``fail_stale_trials`` and at each new trial."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                self.set_trial_user_attr(trial_id, FAIL_REASON, STALE_REASON)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it a moment ago
        return stale
