"""Predicted-Final-Loss (PFL): extrapolating a learning curve to the end of training.

Pure arithmetic on curves given as plain sequences of floats (no Optuna).

:func:`predict_final_loss` takes ``values[i]``, the metric after epoch ``i + 1``, and
predicts its value at a target epoch:

1. Non-finite values are dropped and the curve is cut at the target epoch; a curve of
   fewer than ``MIN_POINTS_FOR_FIT`` points returns its last value.
2. The curve is scaled into [-1, 1] (keeping differences finite near the float range
   limits) and smoothed with an exponential moving average of span
   ``min(n // 3, MAX_EMA_SPAN)``, seeded on the initial linear trend so that no start-up
   transient remains.
3. ``a*exp(-b*t) + c`` is fitted through three equally spaced anchors of the smoothed
   curve (the first one span in, the last at its end) when they decelerate monotonically
   (``r = (y2 - y1) / (y1 - y0)`` in ``(0, 1)``), and evaluated at the target as a
   geometric series; otherwise the recent least-squares slope catches up the EMA's lag and
   then continues to the target at half that slope.
4. Either way the EMA's lag of ``(span - 1) / 2`` epochs is added to the horizon, so the
   prediction lands on the raw curve rather than the smoothed one.

How noisy a curve is: :func:`noise_level` is the spread of the recent epochs around their
local trend, the trial's own share of the pruner's uncertainty band.

The pruner's forecast no longer rests on this fit: it is calibrated on the study's own
completed curves (:mod:`lightning_hpo.pruners.calibration`), which on recorded curves
predicted final values as well or better and knows its own uncertainty. The fit stays
as a curve tool of the public API (``lightning_hpo.predict_final_loss``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "MAX_EMA_SPAN",
    "MIN_POINTS_FOR_FIT",
    "noise_level",
    "predict_final_loss",
]

MIN_POINTS_FOR_FIT = 10
MAX_EMA_SPAN = 20


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
    slope. Either way the EMA's lag of ``(span - 1) / 2`` epochs is added to the horizon.
    Curves shorter than 10 points return their last value; a curve that already reached
    ``target_epoch`` is cut there and returns a smoothed estimate of its value at that
    epoch.

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


NOISE_WINDOW = 10  # recent epochs the noise level is measured over
_MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation, normal noise


def noise_level(values: Sequence[float], window: int = NOISE_WINDOW) -> float:
    """Spread of the last ``window`` finite values around their local trend, as a standard deviation.

    Each inner point's residual from the line through its two neighbours,
    ``x[i] - (x[i-1] + x[i+1]) / 2``, has variance ``1.5 * sigma**2`` for independent noise
    of deviation ``sigma``, and a smooth curve's residuals are only its curvature. The
    median absolute residual makes one spike count for little. Fewer than 3 finite values
    give 0.
    """
    curve = [v for v in values if math.isfinite(v)][-window:]
    residuals = sorted(
        abs(curve[i] - (curve[i - 1] + curve[i + 1]) / 2) for i in range(1, len(curve) - 1)
    )
    if not residuals:
        return 0.0
    k = len(residuals)
    median = residuals[k // 2] if k % 2 else (residuals[k // 2 - 1] + residuals[k // 2]) / 2
    return _MAD_TO_SIGMA * median / math.sqrt(1.5)
