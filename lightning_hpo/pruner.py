"""Predicted-Final-Loss (PFL) pruner.

The pruner extrapolates each learning curve to the end of training
(:func:`predict_final_loss`) and prunes a running trial whose predicted final value is
worse than the worst prediction among the ``top_k`` best completed trials, provided the
trial's own evidence agrees: its best value so far must also rank outside the best
``quantile`` of the completed trials over the SAME epochs (their curves cut to its
length). The prediction lets a curve that has flattened out at a bad value be stopped
early and lets a slow starter with a good asymptote survive; the same-epoch check keeps
an extrapolation error from cutting a trial that is doing well so far. Conversely, a
trial that ranks outside the best ``overrule_quantile`` over the same epochs is pruned
even when its prediction is within the reference set: that far behind, its extrapolation
is not trusted.

Why both: from early epochs the extrapolation ranks configurations worse than the raw
values do (a cosine schedule's late drop is not exponential, and noisy early curves
extrapolate to implausible values, e.g. a negative cross-entropy), while the completed
trials' predictions sit near their final values. On replayed learning curves
(``benchmarks/bench_pruners.py``) the prediction alone lost the best configuration; gated
by the same-epoch rank but never overruled it trained more epochs than
:class:`optuna.pruners.MedianPruner`; with the overrule it trains fewer epochs than the
median pruner at no more regret on both recorded tasks.

Every decision is derived from what the study stores (completed trials, the running
trial's intermediate values and user attrs). The only in-memory state is a cache of
numbers derived from completed trials (their predictions and running best values), which
never change, so several processes sharing one storage, or a study reloaded after a
restart, decide identically.

One curve per trial
-------------------
A trial's intermediate values are one learning curve with step = 0-based epoch, as the
stock ``PyTorchLightningPruningCallback`` reports it. A trial of several seeds reports
one value per epoch (the tuner's mean over seeds trained together, or its first seed's
value when they train one after another), so trials compare epoch by epoch whatever
their seeds. The tuner records the run's epoch count in the user attr ``epochs`` (the
pruner's default target epoch) and the seeds per trial in ``n_seeds`` (informational).

Stored predictions
------------------
Each time the pruner predicts a running trial's final value it writes one user attr,
``"pfl"``: its latest decision (step, reason, prediction, threshold) and every
prediction so far, so optuna-dashboard shows it, at one storage write per prediction.
:func:`stored_predictions` reads the predictions back for the report.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = [
    "EPOCHS_ATTR",
    "N_SEEDS_ATTR",
    "PFL_ATTR",
    "decision_record",
    "PFLDecision",
    "PFLPruner",
    "epochs_of",
    "predict_final_loss",
    "prefix_trial",
    "stored_predictions",
    "trial_curve",
    "trial_pfl",
]

EPOCHS_ATTR = "epochs"
N_SEEDS_ATTR = "n_seeds"
PFL_ATTR = "pfl"  # trial user attr: the latest decision and every prediction (decision_record)

MIN_POINTS_FOR_FIT = 10
MAX_EMA_SPAN = 20


# --------------------------------------------------------------------------- arithmetic


def _ema_span(n: int) -> int:
    return min(n // 3, MAX_EMA_SPAN)


def _ema_lag(span: int) -> float:
    """Delay in epochs of an EMA behind a linear trend, ``(1 - alpha) / alpha``."""
    return (span - 1) / 2 if span > 1 else 0.0


def _slope(values: Sequence[float]) -> float:
    """Least-squares slope per epoch of ``values``."""
    k = len(values)
    if k < 2:
        return 0.0
    t_mean = (k - 1) / 2
    x_mean = math.fsum(values) / k
    covariance = math.fsum((i - t_mean) * (x - x_mean) for i, x in enumerate(values))
    return covariance / (k * (k * k - 1) / 12)


def _ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with ``alpha = 2 / (span + 1)``; ``span <= 1`` copies."""
    if span <= 1:
        return list(values)
    alpha = 2 / (span + 1)
    # Seeded where a steady-state EMA of the initial linear trend would sit: seeding at
    # values[0] leaves a transient decaying like (1 - alpha)^t that the three-point fit
    # would mistake for part of the learning curve.
    level = values[0] - _slope(values[:span]) * _ema_lag(span)
    smoothed = []
    for x in values:
        level += alpha * (x - level)
        smoothed.append(level)
    return smoothed


def _anchor_indices(n: int, burn_in: int) -> tuple[int, int, int]:
    """Three equally spaced indices ending at ``n - 1``, starting at or after ``burn_in``."""
    last = n - 1
    spacing = max((last - burn_in) // 2, 1)
    return last - 2 * spacing, last - spacing, last


def _exp_fit_through_anchors(y0: float, y1: float, y2: float, spacings: float) -> float | None:
    """Value ``spacings`` anchor spacings after ``y2`` of ``a*exp(-b*t) + c`` through the anchors.

    Args:
        y0: Value at the first anchor.
        y1: Value one spacing later.
        y2: Value two spacings later.
        spacings: How far past ``y2`` to evaluate, in anchor spacings (>= 0).

    Returns:
        The extrapolated value, or None when the anchors are not a decelerating monotone
        sequence (``r = (y2 - y1) / (y1 - y0)`` outside ``(0, 1)``).
    """
    d1 = y1 - y0
    d2 = y2 - y1
    if d1 == 0:
        return None
    r = d2 / d1
    if not 0 < r < 1:
        return None
    # Geometric series d2 * (r + r^2 + ... + r^spacings), kept accurate as r -> 1.
    return y2 + d2 * r * -math.expm1(spacings * math.log(r)) / (1 - r)


def _half_slope_extrapolation(recent: Sequence[float], lag: float, horizon: float) -> float:
    """Catch up the EMA lag at the recent slope, then continue ``horizon`` epochs at half of it.

    Args:
        recent: The recent part of the smoothed curve, ending at its last point.
        lag: EMA delay in epochs.
        horizon: Epochs from the last point to the target.
    """
    # A least-squares slope rather than the end-point difference, so a residual
    # oscillation does not turn into a trend.
    slope = _slope(recent)
    return recent[-1] + slope * lag + 0.5 * slope * horizon


def _predict_scaled(curve: Sequence[float], horizon: int) -> float:
    """PFL of a curve with ``len >= MIN_POINTS_FOR_FIT``, ``horizon`` epochs past its end."""
    n = len(curve)
    span = _ema_span(n)
    smoothed = _ema(curve, span)
    lag = _ema_lag(span)
    i0, i1, i2 = _anchor_indices(n, burn_in=min(span, n - 3))
    spacing = i2 - i1
    y0, y1, y2 = smoothed[i0], smoothed[i1], smoothed[i2]
    # The smoothed curve trails the raw one by about `lag` epochs, so extrapolate that
    # much further to land on the raw curve at the target epoch.
    fitted = _exp_fit_through_anchors(y0, y1, y2, (horizon + lag) / spacing)
    if fitted is not None:
        return fitted
    return _half_slope_extrapolation(smoothed[i1:], lag, horizon)


def predict_final_loss(values: Sequence[float], target_epoch: int) -> float:
    """Predict the metric at epoch ``target_epoch`` from a learning curve.

    ``values[i]`` is the metric after epoch ``i + 1``. The curve is smoothed with an EMA
    (span ``min(n // 3, 20)``); ``a*exp(-b*t) + c`` is fitted through three equally spaced
    anchors of the smoothed curve (the first one span in, the last at the end) when they
    decelerate monotonically, otherwise the recent trend is extrapolated at half its
    slope. Either way the EMA's lag of ``(span - 1) / 2`` epochs is added to the horizon. Curves shorter than 10 points return
    their last value; a curve that already reached ``target_epoch`` is cut there and
    returns a smoothed estimate of its value at that epoch.

    Non-finite values are ignored. Never raises and returns a finite number for any
    non-empty finite input; an input without a finite value (e.g. empty) returns NaN.

    Args:
        values: Metric per epoch, any sign.
        target_epoch: Epoch count of a full run (values below 1 are treated as 1).

    Returns:
        The predicted value at ``target_epoch``.
    """
    target = max(int(target_epoch), 1)
    curve = [float(v) for v in values if math.isfinite(v)][:target]
    if not curve:
        return math.nan
    last = curve[-1]
    if len(curve) < MIN_POINTS_FOR_FIT:
        return last
    # Working on values scaled into [-1, 1] keeps differences and products finite for
    # curves near the float range limits.
    scale = max(abs(v) for v in curve)
    if scale == 0:
        return last
    prediction = scale * _predict_scaled([v / scale for v in curve], target - len(curve))
    return prediction if math.isfinite(prediction) else last


def _is_worse(value: float, reference: float, direction: StudyDirection) -> bool:
    if direction == StudyDirection.MAXIMIZE:
        return value < reference
    return value > reference


def _worst(values: Sequence[float], direction: StudyDirection) -> float:
    return min(values) if direction == StudyDirection.MAXIMIZE else max(values)


def _running_best(values: Sequence[float], maximize: bool) -> list[float]:
    """Best finite value of ``values[: i + 1]`` for every ``i``.

    Before the first finite value the entry is the worst infinity (``inf`` when
    minimizing), which the same-epoch ranking leaves out.
    """
    # Chained comparisons skip NaN (every comparison is False) and both infinities; a
    # plain loop is about 4x faster than itertools.accumulate with min/max.
    out = []
    if maximize:
        best = -math.inf
        for v in values:
            if best < v < math.inf:
                best = v
            out.append(best)
    else:
        best = math.inf
        for v in values:
            if best > v > -math.inf:
                best = v
            out.append(best)
    return out


# --------------------------------------------------------------------------- trial curve


def trial_curve(trial: FrozenTrial) -> list[float]:
    """The trial's intermediate values ordered by step: its value after each epoch."""
    values = trial.intermediate_values
    return [values[step] for step in sorted(values)]


def epochs_of(trial: FrozenTrial) -> int | None:
    """The trial's ``epochs`` attr (a full run's epoch count), or None when absent or invalid."""
    value = trial.user_attrs.get(EPOCHS_ATTR)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def trial_pfl(trial: FrozenTrial, target_epoch: int) -> float:
    """:func:`predict_final_loss` of the trial's curve (NaN without intermediate values)."""
    return predict_final_loss(trial_curve(trial), target_epoch)


def stored_predictions(trial: FrozenTrial) -> dict[int, float]:
    """Predictions the pruner stored on ``trial``, step -> PFL, sorted by step."""
    return _predictions(trial.user_attrs.get(PFL_ATTR))


def _predictions(record: Any) -> dict[int, float]:
    history = record.get("history", []) if isinstance(record, dict) else []
    return dict(sorted((int(step), float(pfl)) for step, pfl in history))


def decision_record(decision: PFLDecision, previous: Any = None) -> dict[str, Any]:
    """What :meth:`PFLPruner.prune` stores on the trial (user attr ``pfl``, which
    optuna-dashboard shows): its latest decision, and every prediction so far
    (``previous``: the record stored before)."""
    history = [[step, pfl] for step, pfl in _predictions(previous).items() if step != decision.step]
    history.append([decision.step, decision.pfl])
    return {
        "step": decision.step,
        "decision": decision.reason,
        "prune": decision.prune,
        "predicted": decision.pfl,
        "threshold": decision.threshold,
        "history": history,
    }


def prefix_trial(trial: FrozenTrial, last_step: int) -> FrozenTrial:
    """Shallow copy of ``trial`` that has reported only up to ``last_step`` (for replays)."""
    prefix = copy.copy(trial)
    prefix.intermediate_values = {
        step: value for step, value in trial.intermediate_values.items() if step <= last_step
    }
    return prefix


# --------------------------------------------------------------------------- pruner


@dataclass(frozen=True)
class PFLDecision:
    """Outcome of :meth:`PFLPruner.evaluate`.

    ``reason`` is one of ``"no-values"``, ``"non-finite"`` (pruned), ``"startup"``,
    ``"warm-up"``, ``"no-reference"``, ``"worse"`` (pruned: predicted worse than the
    reference set and not protected by the same-epoch rank), ``"overruled"`` (pruned:
    predicted within the reference set but ranked outside ``overrule_quantile`` over the
    same epochs), ``"protected"`` (kept: predicted worse, but ranked within ``quantile``
    over the same epochs) and ``"ok"`` (kept).

    ``pfl`` is the trial's predicted final value and ``threshold`` the worst prediction
    among the ``top_k`` best completed trials; ``score`` is the trial's best value so far,
    ``protected_bound`` and ``overrule_bound`` the completed trials' best values over as
    many epochs that it is ranked against (None where too few).
    """

    prune: bool
    reason: str
    step: int | None = None
    pfl: float | None = None
    threshold: float | None = None
    target_epoch: int | None = None
    score: float | None = None
    protected_bound: float | None = None
    overrule_bound: float | None = None


_final_value = attrgetter("value")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def _check_fraction(name: str, value: object, minimum: float, why: str = "") -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not minimum <= value <= 1.0
    ):
        raise ValueError(f"{name} must be a number in [{minimum:g}, 1]{why}, got {value!r}.")


def _rank_bound(scores: Sequence[float], fraction: float, top_k: int) -> float | None:
    """The ``max(top_k, ceil(fraction * n))``-th of the ``n`` best-first ``scores``, or None."""
    # round() first: 0.55 * 100 is 55.00000000000001 in floating point.
    k = max(top_k, math.ceil(round(fraction * len(scores), 9)))
    return scores[k - 1] if len(scores) >= k else None


class PFLPruner(optuna.pruners.BasePruner):
    """Prune trials predicted to end worse than the top-k completed trials, when their
    best value so far agrees.

    A running trial past start-up and warm-up is ranked two ways against the ``n``
    completed trials:

    * prediction: its predicted final value (:func:`predict_final_loss` of its curve)
      against the worst prediction among the ``top_k`` best completed trials (by final
      value, each predicted from its whole curve);
    * same-epoch evidence: its best value so far against the completed trials' best
      values over the same epochs. It is *protected* while it ranks within the best
      ``max(top_k, ceil(quantile * n))`` of them, and *overruled* once it ranks outside
      the best ``max(top_k, ceil(overrule_quantile * n))``.

    It is pruned when it is predicted worse and not protected (``"worse"``), or when it is
    overruled whatever its prediction (``"overruled"``). Between the two bands the
    prediction decides; a slow starter whose curve points below the reference set
    survives there. Non-finite values are pruned at once.

    Args:
        n_startup_trials: No pruning until this many trials are COMPLETE (pruned and
            failed trials do not count). Default 10.
        n_warmup_epochs: No pruning while the trial has reported this many epochs or
            fewer, unless that is its whole run (its ``epochs`` attr); non-finite values
            are pruned regardless. Default 10.
        top_k: Size of the reference set: the best completed trials by final value. Also
            the fewest completed trials a running trial is protected among. Default 5.
        target_epoch: Epoch count of a full run. Defaults to the trial's ``epochs``
            attr, else the longest curve among completed trials.
        quantile: Protected fraction of the completed trials, in [0, 1]. Default 0.5.
        overrule_quantile: Fraction beyond which the same-epoch rank prunes whatever the
            prediction, in [quantile, 1]; None never overrules the prediction. Default
            0.65.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(
        self,
        n_startup_trials: int = 10,
        n_warmup_epochs: int = 10,
        top_k: int = 5,
        target_epoch: int | None = None,
        quantile: float = 0.5,
        overrule_quantile: float | None = 0.65,
    ) -> None:
        _check_int("n_startup_trials", n_startup_trials, 0)
        _check_int("n_warmup_epochs", n_warmup_epochs, 0)
        _check_int("top_k", top_k, 1)
        if target_epoch is not None:
            _check_int("target_epoch", target_epoch, 1)
        _check_fraction("quantile", quantile, 0.0)
        if overrule_quantile is not None:
            why = f" (at least quantile={quantile:g}: set both)" if quantile > 0 else ""
            _check_fraction("overrule_quantile", overrule_quantile, float(quantile), why)
        self._n_startup_trials = n_startup_trials
        self._n_warmup_epochs = n_warmup_epochs
        self._top_k = top_k
        self._target_epoch = target_epoch
        self._quantile = float(quantile)
        self._overrule_quantile = None if overrule_quantile is None else float(overrule_quantile)
        # Completed trials never change, so their derived numbers are cached. The value
        # stored alongside guards against a different study that reuses the name.
        self._pfl_cache: dict[tuple[str, int, int], tuple[float, float]] = {}
        self._best_cache: dict[tuple[str, int, bool], tuple[float, list[float]]] = {}

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        decision = self.evaluate(study, trial)
        if decision.pfl is not None:  # one write per prediction, as many as the reports
            # Read back from the storage: the trial Optuna hands a pruner may be a cached copy.
            previous = study._storage.get_trial_user_attrs(trial._trial_id).get(PFL_ATTR)
            study._storage.set_trial_user_attr(
                trial._trial_id, PFL_ATTR, decision_record(decision, previous)
            )
        return decision.prune

    def evaluate(self, study: Study, trial: FrozenTrial) -> PFLDecision:
        """Decide about ``trial`` without writing anything.

        :meth:`prune` is this plus storing the prediction. Replays can call it with
        :func:`prefix_trial` copies; the trial itself is never part of its reference set.

        Raises:
            ValueError: The study has more than one objective.
        """
        directions = study.directions
        if len(directions) > 1:
            raise ValueError("PFLPruner supports single-objective studies only.")
        step = trial.last_step
        if step is None:
            return PFLDecision(False, "no-values")
        if not math.isfinite(trial.intermediate_values[step]):
            return PFLDecision(True, "non-finite", step)
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self._n_startup_trials:
            return PFLDecision(False, "startup", step)

        curve = trial_curve(trial)
        epochs = epochs_of(trial)
        # A curve that holds the whole run counts even inside the warm-up, so a run of at
        # most n_warmup_epochs epochs is still decided once, at its last epoch.
        if len(curve) <= self._n_warmup_epochs and (epochs is None or len(curve) < epochs):
            return PFLDecision(False, "warm-up", step)

        target = self._target_for(trial, completed, len(curve))
        pfl = predict_final_loss(curve, target)
        if math.isnan(pfl):
            return PFLDecision(True, "non-finite", step, target_epoch=target)
        direction = directions[0]
        maximize = direction == StudyDirection.MAXIMIZE
        threshold = self._threshold(study.study_name, completed, target, direction, trial)

        # The last value is finite (checked above), so the best so far is too.
        score = _running_best(curve, maximize)[-1]
        scores = self._same_epoch_scores(study.study_name, completed, len(curve), maximize, trial)
        protected = _rank_bound(scores, self._quantile, self._top_k)
        overrule = None
        if self._overrule_quantile is not None:
            overrule = _rank_bound(scores, self._overrule_quantile, self._top_k)

        def decision(prune: bool, reason: str) -> PFLDecision:
            return PFLDecision(
                prune, reason, step, pfl, threshold, target, score, protected, overrule
            )

        if threshold is None or protected is None:
            return decision(False, "no-reference")
        predicted_worse = _is_worse(pfl, threshold, direction)
        if not _is_worse(score, protected, direction):
            return decision(False, "protected" if predicted_worse else "ok")
        if predicted_worse:
            return decision(True, "worse")
        if overrule is not None and _is_worse(score, overrule, direction):
            return decision(True, "overruled")
        return decision(False, "ok")

    def _same_epoch_scores(
        self,
        study_name: str,
        completed: list[FrozenTrial],
        n_epochs: int,
        maximize: bool,
        trial: FrozenTrial,
    ) -> list[float]:
        """Completed trials' best values over their first ``n_epochs`` epochs (all of a
        shorter curve), best first; trials without a finite value there are left out."""
        cache = self._best_cache
        scores = []
        for t in completed:
            if t.number == trial.number or not t.intermediate_values:
                continue
            hit = cache.get((study_name, t.number, maximize))
            bests = hit[1] if hit is not None and hit[0] == t.value else None
            if bests is None:
                bests = self._store_running_bests(study_name, t, maximize)
            score = bests[min(n_epochs, len(bests)) - 1]  # ~1 us per completed trial
            if not math.isinf(score):
                scores.append(score)
        scores.sort(reverse=maximize)
        return scores

    def _store_running_bests(
        self, study_name: str, trial: FrozenTrial, maximize: bool
    ) -> list[float]:
        bests = _running_best(trial_curve(trial), maximize)
        self._best_cache[(study_name, trial.number, maximize)] = (trial.value, bests)
        return bests

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

    def _threshold(
        self,
        study_name: str,
        completed: list[FrozenTrial],
        target: int,
        direction: StudyDirection,
        trial: FrozenTrial,
    ) -> float | None:
        """Worst PFL among the ``top_k`` best completed trials with curves, or None."""
        candidates = [t for t in completed if t.intermediate_values and t.number != trial.number]
        best = heapq.nlargest if direction == StudyDirection.MAXIMIZE else heapq.nsmallest
        references = best(self._top_k, candidates, key=_final_value)
        pfls = [self._reference_pfl(study_name, t, target) for t in references]
        pfls = [p for p in pfls if not math.isnan(p)]
        return _worst(pfls, direction) if pfls else None

    def _reference_pfl(self, study_name: str, trial: FrozenTrial, target: int) -> float:
        key = (study_name, trial.number, target)
        hit = self._pfl_cache.get(key)
        if hit is not None and hit[0] == trial.value:
            return hit[1]
        pfl = trial_pfl(trial, target)
        self._pfl_cache[key] = (trial.value, pfl)
        return pfl
