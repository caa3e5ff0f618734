"""Trials of dead workers: failed with a reason a user can see, and run once more.

Optuna's RDB heartbeat marks a silent worker's trial FAIL and hands it to a stale-trial
callback. Optuna's own ``RetryHeartbeatStaleTrialCallback`` copies the dead trial's
system and user attributes into the retry: its host, PID and PFL predictions. A worker
starting on that host before the retry has written its own PID could then take the
retry for a dead worker's trial. ``RetryOnce`` queues the parameters and the link back,
nothing else.

Optuna's heartbeat thread ends at the first error its storage raises, and the trial of a
live worker is then failed as stale after the grace period: ``LabelledRDBStorage`` notes
such an error once per trial and lets the next beat try again.
"""

from __future__ import annotations

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from lightning_hpo.attrs import FAIL_REASON, RETRIED_FROM, RETRY_OF
from lightning_hpo.console import note_once
from lightning_hpo.errors import one_line
from lightning_hpo.storage.signed import SignedClaims, signed

STALE_REASON = "its worker stopped sending heartbeats (killed, or its machine lost): failed, and its parameters queued once more"


def missed_beat(trial: str, exc: BaseException, interval: float | None) -> str:
    """The note for a heartbeat of ``trial`` the storage failed to write, in one line."""
    return (
        f"{trial}: a heartbeat could not be written ({one_line(exc, 200)}); the trial goes "
        f"on, and its heartbeat tries again every {interval:g} s"
    )


def queue_retry(study: optuna.Study, trial: FrozenTrial, once: bool = True) -> bool:
    """Queue ``trial``'s parameters once more; with ``once``, not when it is itself a retry
    (a trial that kills its worker is not run forever). Never twice: a worker interrupted
    as it failed its trial may have queued it already. True if queued."""
    if once and (RETRY_OF in trial.user_attrs or RETRIED_FROM in trial.system_attrs):
        return False
    if any(
        t.system_attrs.get(RETRIED_FROM) == trial.number for t in study.get_trials(deepcopy=False)
    ):
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


class LabelledRDBStorage(SignedClaims, RDBStorage):
    """``RDBStorage`` that writes ``fail_reason`` on a heartbeat-stale trial before Optuna
    fails it (a finished trial's attributes can no longer change), so the dashboard
    shows why it failed. Optuna looks stale trials up through ``_get_stale_trial_ids``
    wherever it fails them, in ``fail_stale_trials`` and at each new trial. A heartbeat it
    fails to write is noted once per trial, not raised: Optuna's thread would end there.
    Its trials are signed by their worker (``storage.signed``)."""

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None):
        # Optuna's cache layer (_CachedStorage) creates RDB trials through this method.
        return super()._create_new_trial(study_id, signed(template_trial))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                self.set_trial_user_attr(trial_id, FAIL_REASON, STALE_REASON)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it a moment ago
        return stale

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:  # noqa: BLE001 - a storage hiccup: the next beat tries again
            missed = self.__dict__.setdefault("_missed_beats", set())
            if trial_id not in missed:
                missed.add(trial_id)
                try:
                    trial = f"trial {self.get_trial_number_from_id(trial_id)}"
                except Exception:  # noqa: BLE001 - the storage is still out: name it by id
                    trial = f"the trial of id {trial_id}"
                note_once(missed_beat(trial, exc, self.heartbeat_interval))
