"""Predicted-Final-Loss (PFL) pruner.

The pruner extrapolates each learning curve to the end of training
(:func:`predict_final_loss`) and prunes a running trial whose predicted final value is
worse than the worst prediction among the ``top_k`` best completed trials. Comparing
predictions instead of the values at the same step lets a slow starter with a good
asymptote survive, while a curve that has flattened out at a bad value is stopped early.

Every decision is derived from what the study stores (completed trials, the running
trial's intermediate values and user attrs). The only in-memory state is a cache of the
completed trials' predictions, which never change, so several processes sharing one
storage, or a study reloaded after a restart, decide identically.

Layout of several seeds in one trial
------------------------------------
A trial may train several seeds one after another. The tuner then sets the user attrs
``epochs_per_seed`` (int ``E``) and ``n_seeds`` (int ``S``) and reports the value of seed
index ``s`` at 0-based epoch ``e`` at step ``s * E + e``. Without those attrs the whole of
``intermediate_values`` is one curve with step = epoch. :func:`split_curves` undoes the
layout. Optuna's own step-aligned pruners (median, percentile) still behave sensibly on
it, because equal steps mean the same seed index and the same epoch in every trial.

The pruner decides on the mean of the per-seed predictions. For the running trial,
finished seeds always count and the current seed counts once it has more than
``n_warmup_epochs`` values; completed reference trials count all their seeds.

Stored predictions
------------------
Each prediction the pruner computes for a running trial is written to the trial's system
attrs under ``"pfl:<step>"`` (``step`` = the trial's last reported step).
:func:`stored_predictions` reads them back for reports and dashboards.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = [
    "EPOCHS_PER_SEED_ATTR",
    "N_SEEDS_ATTR",
    "PFL_ATTR_PREFIX",
    "PFLDecision",
    "PFLPruner",
    "epochs_per_seed_of",
    "mean_pfl",
    "predict_final_loss",
    "prefix_trial",
    "split_curves",
    "stored_predictions",
    "trial_pfl",
]

EPOCHS_PER_SEED_ATTR = "epochs_per_seed"
N_SEEDS_ATTR = "n_seeds"
PFL_ATTR_PREFIX = "pfl:"

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


def mean_pfl(curves: Sequence[Sequence[float]], target_epoch: int) -> float:
    """Mean of :func:`predict_final_loss` over ``curves``; NaN when there are none."""
    if not curves:
        return math.nan
    return math.fsum(predict_final_loss(c, target_epoch) for c in curves) / len(curves)


def _is_worse(value: float, reference: float, direction: StudyDirection) -> bool:
    if direction == StudyDirection.MAXIMIZE:
        return value < reference
    return value > reference


def _worst(values: Sequence[float], direction: StudyDirection) -> float:
    return min(values) if direction == StudyDirection.MAXIMIZE else max(values)


# --------------------------------------------------------------------------- trial layout


def split_curves(
    intermediate_values: Mapping[int, float], epochs_per_seed: int | None
) -> list[list[float]]:
    """Split intermediate values into per-seed curves, each ordered by step.

    Args:
        intermediate_values: Step -> value, as stored on a trial.
        epochs_per_seed: ``E`` of the seed layout (seed ``s``, epoch ``e`` at step
            ``s * E + e``), or None for a single curve.

    Returns:
        The non-empty curves in seed order.
    """
    steps = sorted(intermediate_values)
    if epochs_per_seed is None:
        return [[intermediate_values[s] for s in steps]] if steps else []
    if epochs_per_seed < 1:
        raise ValueError(f"epochs_per_seed must be >= 1, got {epochs_per_seed!r}.")
    curves: dict[int, list[float]] = {}
    for step in steps:
        curves.setdefault(step // epochs_per_seed, []).append(intermediate_values[step])
    return [curves[seed] for seed in sorted(curves)]


def epochs_per_seed_of(trial: FrozenTrial) -> int | None:
    """The trial's ``epochs_per_seed`` layout attr, or None when absent or invalid."""
    value = trial.user_attrs.get(EPOCHS_PER_SEED_ATTR)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def _decisive_curves(
    curves: list[list[float]], epochs_per_seed: int | None, n_warmup_epochs: int
) -> list[list[float]]:
    """Curves of a running trial that count: finished seeds, the current one once warmed up."""
    if not curves:
        return []
    *finished, current = curves
    current_finished = epochs_per_seed is not None and len(current) >= epochs_per_seed
    if current_finished or len(current) > n_warmup_epochs:
        return curves
    return finished


def trial_pfl(
    trial: FrozenTrial, target_epoch: int, epochs_per_seed: int | None = None
) -> float:
    """Mean per-seed PFL of all of a trial's curves (NaN without intermediate values).

    Args:
        trial: Any trial; its seed layout is read from its user attrs unless given.
        target_epoch: Epoch count of a full run (per seed).
        epochs_per_seed: Overrides the layout attr.
    """
    per_seed = epochs_per_seed if epochs_per_seed is not None else epochs_per_seed_of(trial)
    return mean_pfl(split_curves(trial.intermediate_values, per_seed), target_epoch)


def _longest_curve(trial: FrozenTrial) -> int:
    per_seed = epochs_per_seed_of(trial)
    if per_seed is None:
        return len(trial.intermediate_values)
    return max((len(c) for c in split_curves(trial.intermediate_values, per_seed)), default=0)


def stored_predictions(trial: FrozenTrial) -> dict[int, float]:
    """Predictions the pruner stored on ``trial``, step -> PFL, sorted by step."""
    found = {
        int(key[len(PFL_ATTR_PREFIX) :]): float(value)
        for key, value in trial.system_attrs.items()
        if key.startswith(PFL_ATTR_PREFIX)
    }
    return dict(sorted(found.items()))


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

    ``reason`` is one of ``"no-values"``, ``"non-finite"``, ``"startup"``, ``"warm-up"``,
    ``"no-reference"``, ``"worse"`` (pruned) and ``"ok"``.
    """

    prune: bool
    reason: str
    step: int | None = None
    pfl: float | None = None
    threshold: float | None = None
    target_epoch: int | None = None


_final_value = attrgetter("value")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


class PFLPruner(optuna.pruners.BasePruner):
    """Prune trials whose predicted final value is worse than the top-k completed trials'.

    Args:
        n_startup_trials: No pruning until this many trials are COMPLETE (pruned and
            failed trials do not count).
        n_warmup_epochs: No pruning while the current seed has reported this many
            epochs or fewer (non-finite values are pruned regardless).
        top_k: Size of the reference set: the best completed trials by final value.
        target_epoch: Epoch count of a full run (per seed). Defaults to the trial's
            ``epochs_per_seed`` attr, else the longest curve among completed trials.
    """

    def __init__(
        self,
        n_startup_trials: int = 10,
        n_warmup_epochs: int = 10,
        top_k: int = 10,
        target_epoch: int | None = None,
    ) -> None:
        _check_int("n_startup_trials", n_startup_trials, 0)
        _check_int("n_warmup_epochs", n_warmup_epochs, 0)
        _check_int("top_k", top_k, 1)
        if target_epoch is not None:
            _check_int("target_epoch", target_epoch, 1)
        self._n_startup_trials = n_startup_trials
        self._n_warmup_epochs = n_warmup_epochs
        self._top_k = top_k
        self._target_epoch = target_epoch
        # Completed trials never change, so their derived numbers are cached. The value
        # stored alongside guards against a different study that reuses the name.
        self._pfl_cache: dict[tuple[str, int, int], tuple[float, float]] = {}
        self._length_cache: dict[tuple[str, int], tuple[float, int]] = {}

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        decision = self.evaluate(study, trial)
        if decision.pfl is not None:
            study._storage.set_trial_system_attr(
                trial._trial_id, f"{PFL_ATTR_PREFIX}{decision.step}", decision.pfl
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

        per_seed = epochs_per_seed_of(trial)
        curves = split_curves(trial.intermediate_values, per_seed)
        decisive = _decisive_curves(curves, per_seed, self._n_warmup_epochs)
        if not decisive:
            return PFLDecision(False, "warm-up", step)

        target = self._target_for(study.study_name, trial, completed, curves)
        pfl = mean_pfl(decisive, target)
        if math.isnan(pfl):
            return PFLDecision(True, "non-finite", step, target_epoch=target)
        threshold = self._threshold(study.study_name, completed, target, directions[0], trial)
        if threshold is None:
            return PFLDecision(False, "no-reference", step, pfl, None, target)
        worse = _is_worse(pfl, threshold, directions[0])
        return PFLDecision(worse, "worse" if worse else "ok", step, pfl, threshold, target)

    def _target_for(
        self,
        study_name: str,
        trial: FrozenTrial,
        completed: list[FrozenTrial],
        curves: list[list[float]],
    ) -> int:
        if self._target_epoch is not None:
            return self._target_epoch
        per_seed = epochs_per_seed_of(trial)
        if per_seed is not None:
            return per_seed
        longest = max((self._curve_length(study_name, t) for t in completed), default=0)
        return longest if longest > 0 else max(len(c) for c in curves)

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

    def _curve_length(self, study_name: str, trial: FrozenTrial) -> int:
        key = (study_name, trial.number)
        hit = self._length_cache.get(key)
        if hit is not None and hit[0] == trial.value:
            return hit[1]
        length = _longest_curve(trial)
        self._length_cache[key] = (trial.value, length)
        return length
