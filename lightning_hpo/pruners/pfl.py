"""Predicted-Final-Loss (PFL) pruner: its decisions, from what the study stores.

A running trial is pruned when the probability that it ends among the study's best
is small, that probability being read off a forecast of its final value calibrated on
the study's own completed trials (:mod:`lightning_hpo.pruners.calibration`):

* its *level* at epoch ``e`` is the median of its last three values (one spike or lucky
  dip moves it little);
* its *trend* is how far its level moved over its recent third of epochs;
* the completed trials nearest to it at the same epoch ``e``, in level and (weighted by
  ``shape_weight``) in trend over the same epochs, are its neighbours: a curve that has
  turned up is forecast from curves that turned up, one still falling from curves that
  were still falling. How each of them moved from epoch ``e`` to its final value, added
  to the trial's level, is one possible outcome;
* the forecast is the mixture of these outcomes, each blurred by the trial's own noise
  and the spread of the moves; the point prediction is its median;
* the trial is pruned when the forecast's probability of ending at or better than the
  ``r``-th best completed final value is below ``min_probability``, ``r`` being
  ``top_fraction`` of the study's finished trials of its kind (completed or pruned,
  rounded up), at least ``top_k``: the bar scales with the study, so that a 20-trial study
  can prune and a 1,000-trial one does not demand a place among its ten best.

Why from the study's own curves: a fitted curve shape does not know a schedule's late
drop, a curve that turns up when it overfits, or how noisy a small validation set is,
and a prediction without its uncertainty cannot say how likely a trial is to beat the
best. The completed trials of the same study, at the same epoch, have all of these in
them, under any learning-rate schedule, declared or not. On recorded curves
(``benchmarks/bench_extrapolation.py``) this forecast's error of the final value is at
or below the fitted extrapolation's and the last value's on most tasks and shares of the
run, and its 10 % and 90 % quantiles are crossed about as often as they should be.

Where the study cannot tell yet, the trial is kept: fewer than ``n_startup_trials``
completed trials of its kind (the same ``curve``, ``lr_schedule`` and ``epochs`` user attrs) or fewer
than that many whose curves reach its epoch (``"startup"``, ``"no-reference"``), or a
curve that has improved over its recent third of epochs by more than any completed curve
did over the same epochs, by more than three times its own noise (``"unlike"``: nothing in the
study shows where such a curve ends).

Every decision is derived from what the study stores (completed trials, the running
trial's intermediate values and user attrs). The only in-memory state is a cache of
numbers derived from completed trials (their levels per epoch), which never change, so
several processes sharing one storage, or a study reloaded after a restart, decide
identically. The cache is keyed by study name, trial number and what was derived, and
every entry keeps the trial's final value, which is checked on each read so that a
different study reusing the name is not served stale numbers.

One curve per trial
-------------------
A trial's intermediate values are one learning curve with step = 0-based epoch, as the
stock ``PyTorchLightningPruningCallback`` reports it. A trial of several seeds reports
one value per epoch (the tuner's mean over seeds trained together, or its first seed's
value when they train one after another); its ``curve`` user attr says which, and only
curves of one kind are compared. The tuner records the run's epoch count in the user attr
``epochs`` (the pruner's default target epoch) and the scheduler in ``lr_schedule``.

Stored decisions
----------------
Each time the pruner decides about a running trial past start-up and warm-up it writes
one user attr, ``"pfl"``: its latest decision (step, reason, prediction, threshold,
probability, neighbours, band; no prediction for ``"unlike"`` and ``"no-reference"``) and
every prediction so far, so optuna-dashboard shows it, at one storage write per report. :func:`lightning_hpo.pruners.records.stored_predictions`
reads the predictions back for the report.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lightning_hpo.attrs import PFL_ATTR
from lightning_hpo.config.validation import is_int, is_number
from lightning_hpo.pruners.calibration import forecast, levels, probability_below
from lightning_hpo.pruners.curves import noise_level
from lightning_hpo.pruners.records import (
    DerivedCache,
    PFLDecision,
    Reason,
    decision_record,
    epochs_of,
    like,
    trial_curve,
)

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["PFLPruner"]

# The decisions the ``pfl`` record stores: every one the study's curves were consulted for.
STORED: frozenset[Reason] = frozenset({"no-reference", "unlike", "worse", "ok"})


def _check_int(name: str, value: object, minimum: int) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def _check_probability(name: str, value: object) -> None:
    if not is_number(value) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")


class PFLPruner(optuna.pruners.BasePruner):
    """Prune trials unlikely to end among the best, by a forecast calibrated on the
    study's own completed curves.

    A running trial past start-up and warm-up is forecast from its level (median of its
    last three values) and the ``neighbours`` completed trials nearest to it at the same
    epoch, in level and recent trend (:func:`lightning_hpo.pruners.calibration.forecast`).
    It is pruned (``"worse"``) when the forecast's probability of a final value at or
    better than the :meth:`top_rank`-th best completed final is below
    ``min_probability``, and kept (``"ok"``) otherwise. Non-finite values are pruned at
    once. It is kept while the study cannot tell (``"startup"``, ``"warm-up"``,
    ``"no-reference"``, ``"unlike"``; see the module docstring).

    Args:
        n_startup_trials: No pruning until this many trials of the trial's kind are
            COMPLETE (pruned and failed trials do not count; at least one), and until that
            many completed curves reach the trial's epoch. Default 10.
        n_warmup_epochs: Fewest epochs of warm-up, >= 0: no pruning while the trial has
            reported this many epochs or fewer, unless that is its whole run (its
            ``epochs`` attr); non-finite values are pruned regardless. Default 0.
        warmup_fraction: The warm-up as a share of the run, in (0, 1]: no pruning while
            the trial has reported ``round(warmup_fraction * epochs)`` epochs or fewer
            (the run's length: ``target_epoch``, else the trial's ``epochs`` attr, else
            the longest completed curve). The warm-up is the longer of this and
            ``n_warmup_epochs``. None: a fixed warm-up of ``n_warmup_epochs``.
            Default 0.1.
        top_k: The trial must be likely enough to end at or better than the ``r``-th
            best completed final value (the worst of them while fewer), ``r`` being
            ``top_k``, or ``top_fraction`` of the finished trials where more: the floor
            of the rank. Default 2.
        top_fraction: The rank to reach as a share of the trials of the trial's kind
            that completed or were pruned (rounded up), in (0, 1]; None: ``top_k``
            alone, whatever the study's size (this pruner's rule before the share).
            Default 0.2.
        min_probability: Pruned below this probability, in [0, 1). Default 0.05.
        neighbours: Completed curves a forecast is drawn from, >= 1. Default 5.
        shape_weight: How much the recent trend counts, against the level, in choosing
            the neighbours, >= 0 (each in units of the completed curves' spread of it);
            0 matches on the level alone. Default 3.
        target_epoch: Epoch count of a full run. Defaults to the trial's ``epochs``
            attr, else the longest curve among completed trials.

    The defaults of ``warmup_fraction``, ``top_k``, ``top_fraction``, ``min_probability``,
    ``neighbours`` and ``shape_weight`` are the setting ``benchmarks/bench_pruners.py``
    selects on its
    recorded tasks, its criterion the worst task (see the README's Performance section
    for the figures with every task left out of the choice).

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(
        self,
        n_startup_trials: int = 10,
        n_warmup_epochs: int = 0,
        warmup_fraction: float | None = 0.1,
        top_k: int = 2,
        top_fraction: float | None = 0.2,
        min_probability: float = 0.05,
        neighbours: int = 5,
        shape_weight: float = 3.0,
        target_epoch: int | None = None,
    ) -> None:
        _check_int("n_startup_trials", n_startup_trials, 0)
        _check_int("n_warmup_epochs", n_warmup_epochs, 0)
        if warmup_fraction is not None and (
            not is_number(warmup_fraction) or not 0 < warmup_fraction <= 1
        ):
            raise ValueError(
                f"warmup_fraction must be a number in (0, 1] or None, got {warmup_fraction!r}."
            )
        _check_int("top_k", top_k, 1)
        if top_fraction is not None and (not is_number(top_fraction) or not 0 < top_fraction <= 1):
            raise ValueError(
                f"top_fraction must be a number in (0, 1] or None, got {top_fraction!r}."
            )
        _check_probability("min_probability", min_probability)
        _check_int("neighbours", neighbours, 1)
        if not is_number(shape_weight) or not 0 <= shape_weight < math.inf:
            raise ValueError(f"shape_weight must be a finite number >= 0, got {shape_weight!r}.")
        if target_epoch is not None:
            _check_int("target_epoch", target_epoch, 1)
        self._n_startup_trials = n_startup_trials
        self._n_warmup_epochs = n_warmup_epochs
        self._warmup_fraction = None if warmup_fraction is None else float(warmup_fraction)
        self._top_k = top_k
        self._top_fraction = None if top_fraction is None else float(top_fraction)
        self._min_probability = float(min_probability)
        self._neighbours = neighbours
        self._shape_weight = float(shape_weight)
        self._target_epoch = target_epoch
        self._cache = DerivedCache()

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        decision = self.evaluate(study, trial)
        if decision.reason in STORED:  # one write per report past start-up and warm-up
            # Read back from the storage: the trial Optuna hands a pruner may be a cached copy.
            previous = study._storage.get_trial_user_attrs(trial._trial_id).get(PFL_ATTR)
            study._storage.set_trial_user_attr(
                trial._trial_id, PFL_ATTR, decision_record(decision, previous)
            )
        return decision.prune

    def evaluate(self, study: Study, trial: FrozenTrial) -> PFLDecision:
        """Decide about ``trial`` without writing anything.

        :meth:`prune` is this plus storing the decision. Replays can call it with
        :func:`lightning_hpo.pruners.records.prefix_trial` copies; the trial itself is
        never one of its references.

        Raises:
            ValueError: The study has more than one objective.
        """
        directions = study.directions
        if len(directions) > 1:
            raise ValueError("PFLPruner supports single-objective studies only.")
        step = trial.last_step
        if step is None:
            return PFLDecision(prune=False, reason="no-values")
        if not math.isfinite(trial.intermediate_values[step]):
            return PFLDecision(prune=True, reason="non-finite", step=step)
        # Like with like: completed curves of the trial's kind (a seed mean or one seed's)
        # and declared schedule.
        finished = [
            t
            for t in like(
                study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                trial,
            )
            if t.number != trial.number
        ]
        completed = [
            t
            for t in finished
            if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        ]
        if len(completed) < max(self._n_startup_trials, 1):  # none to compare with yet
            return PFLDecision(prune=False, reason="startup", step=step)

        curve = trial_curve(trial)
        n = len(curve)
        epochs = epochs_of(trial)
        target = self._target_for(trial, completed, n)
        # A curve that holds the whole run counts even inside the warm-up, so a run no
        # longer than its warm-up is still decided once, at its last epoch.
        if n <= self.warmup_epochs(target) and (epochs is None or n < epochs):
            return PFLDecision(prune=False, reason="warm-up", step=step, target_epoch=target)

        # Loss space: smaller is better whatever the direction (a maximized value negated).
        sign = -1.0 if directions[0] == StudyDirection.MAXIMIZE else 1.0
        own = levels([sign * v for v in curve])
        level = own[-1]
        finals = heapq.nsmallest(self.top_rank(len(finished)), (sign * t.value for t in completed))
        threshold = finals[-1]
        back = lambda x: None if x is None else sign * x  # noqa: E731 (to the study's sign)

        curves = self._cache.lookup(
            study.study_name,
            completed,
            ("levels", sign),
            lambda t: levels([sign * v for v in trial_curve(t)]),
        )
        references, gains = [], []
        window = max(2, n // 3)  # epochs the recent improvement is measured over
        for t, theirs in zip(completed, curves):
            if len(theirs) >= n and math.isfinite(theirs[n - 1]):
                gain = theirs[n - 1 - window] - theirs[n - 1] if n > window else math.nan
                references.append((theirs[n - 1], sign * t.value, -gain))
                if math.isfinite(gain):
                    gains.append(gain)
        noise = noise_level(curve)

        def decision(prune: bool, reason: Reason, **more) -> PFLDecision:
            return PFLDecision(
                prune=prune,
                reason=reason,
                step=step,
                threshold=back(threshold),
                target_epoch=target,
                level=back(level),
                noise=noise,
                **more,
            )

        if len(references) < max(self._n_startup_trials, 1):
            return decision(False, "no-reference")
        # Beyond its own noise (three times it, for a difference of two noisy levels), a curve
        # that improved faster than every completed one is like none of them.
        if n > window and gains and own[n - 1 - window] - level > max(gains) + 3 * noise:
            return decision(False, "unlike")
        references.sort()
        features = []
        if n > window:
            features.append(
                (level - own[n - 1 - window], [r[2] for r in references], self._shape_weight)
            )
        f = forecast(level, [r[:2] for r in references], self._neighbours, noise, features=features)
        if f is None:  # pragma: no cover - references is not empty and level finite
            return decision(False, "no-reference")
        probability = probability_below(f, threshold)
        prune = probability < self._min_probability
        return decision(
            prune,
            "worse" if prune else "ok",
            pfl=back(f.center),
            probability=probability,
            neighbours=f.neighbours,
            band=f.width,
        )

    def top_rank(self, n_finished: int) -> int:
        """The rank of the completed final a trial must be likely enough to reach, in a
        study where ``n_finished`` trials of its kind completed or were pruned: ``top_k``,
        or ``top_fraction`` of them (rounded up) where more."""
        if self._top_fraction is None:
            return self._top_k
        return max(self._top_k, math.ceil(self._top_fraction * n_finished - 1e-9))

    def warmup_epochs(self, run_epochs: int) -> int:
        """Epochs of warm-up for a run of ``run_epochs`` epochs: ``n_warmup_epochs``, or
        ``warmup_fraction`` of the run (to the nearest epoch, halves up) where longer."""
        if self._warmup_fraction is None:
            return self._n_warmup_epochs
        share = math.floor(self._warmup_fraction * run_epochs + 0.5)
        return max(self._n_warmup_epochs, share)

    def _target_for(self, trial: FrozenTrial, completed: list[FrozenTrial], length: int) -> int:
        """``target_epoch``, else the trial's ``epochs`` attr, else the longest completed
        curve, else the trial's own ``length``."""
        if self._target_epoch is not None:
            return self._target_epoch
        epochs = epochs_of(trial)
        if epochs is not None:
            return epochs
        longest = max((len(t.intermediate_values) for t in completed), default=0)
        return longest if longest > 0 else length
