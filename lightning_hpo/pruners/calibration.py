"""A trial's final value forecast from how the study's own completed curves ended.

Pure arithmetic on plain numbers (no Optuna); :mod:`lightning_hpo.pruners.pfl` feeds it
the completed trials of a study and decides with it.

The idea: a learning curve's future is best told by curves of the same search that
were once where it is now. For a running trial at epoch ``e`` whose *level* (the median
of its last three values, so one spike or lucky dip does not move it) is ``x``, take the
``k`` completed trials whose levels at the same epoch ``e`` were nearest to ``x``; each
of them moved by ``d_j = final_j - level_j(e)`` from there to its end. The forecast of
the trial's final value is the mixture of ``x + d_j``: one outcome per neighbour, each
blurred by a normal kernel of width ``h``. So the forecast's centre, spread and shape
(skewed, two-humped, whatever the study's curves did) come from the study's data at
that very epoch, whatever the learning-rate schedule, declared or not: a schedule's late
drop is in the neighbours' moves, and so is overfitting.

The neighbours can be matched on more than the level (``features`` of :func:`forecast`):
the pruner also matches the recent trend, so that a curve that has turned up
(overfitting) is forecast from completed curves that had turned up by the same epoch,
not from curves as high that were still falling.

The kernel width ``h`` combines the trial's own noise (its level is one noisy reading)
with the usual density-estimate bandwidth of the neighbours' moves,
``1.06 * sigma_d * k ** -0.2``, so the band never vanishes while either the trial or its
neighbours are noisy, and stays narrow where the study's curves all moved alike.

All numbers are in *loss space*: smaller is better. A caller that maximizes negates.
"""

from __future__ import annotations

import bisect
import heapq
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Forecast",
    "forecast",
    "levels",
    "probability_below",
]

_MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation, normal noise
_SQRT2 = math.sqrt(2.0)


def levels(values: Sequence[float]) -> list[float]:
    """The causal running median of three of a curve: ``levels[i]`` is the median of
    ``values[i-2..i]``'s finite entries (the mean of two, or the one, where fewer); NaN
    where none is finite."""
    # Written out rather than sorting a window per epoch: a process's first decision
    # derives this for every completed trial (1,000 trials x 100 epochs).
    out = []
    inf, nan = math.inf, math.nan
    a = b = nan
    for c in values:
        # Chained comparisons are False for NaN and both infinities.
        if -inf < a < inf and -inf < b < inf and -inf < c < inf:
            lo, hi = (a, b) if a < b else (b, a)
            out.append(hi if c > hi else c if c > lo else lo)
        else:
            window = [v for v in (a, b, c) if -inf < v < inf]
            if window:
                out.append(math.fsum(window) / len(window))
            else:
                out.append(nan)
        a, b = b, c
    return out


@dataclass(frozen=True)
class Forecast:
    """The predictive distribution of a trial's final value: outcomes ``x + d_j`` of the
    ``neighbours`` nearest completed curves, each blurred by a normal of width ``width``.

    ``center`` is the median outcome (the point prediction), ``spread`` the robust
    standard deviation of the neighbours' moves, ``width`` the kernel width.
    """

    outcomes: tuple[float, ...]
    center: float
    spread: float
    width: float

    @property
    def neighbours(self) -> int:
        return len(self.outcomes)


def _robust_sigma(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return _MAD_TO_SIGMA * statistics.median(abs(v - middle) for v in values)


def forecast(
    level: float,
    references: Sequence[tuple[float, float]],
    k: int,
    noise: float = 0.0,
    *,
    features: Sequence[tuple[float, Sequence[float], float]] = (),
) -> Forecast | None:
    """The forecast of a final value from the trial's ``level`` and the completed trials'
    ``references``: ``(level at the same epoch, final value)`` pairs sorted by level.

    The ``k`` references nearest in level (all of them when fewer) are the neighbours.
    ``noise`` is the trial's own noise (a standard deviation), added to the kernel width
    in quadrature. None without references.

    ``features``: more that the neighbours are matched on, each ``(the trial's value,
    the references' values in their order, weight)`` (e.g. the recent trend). With any
    of positive weight, the neighbours are the ``k`` references nearest in level and
    those features together, each difference in units of the references' robust spread
    of it and multiplied by its weight (the level's weight is 1). A reference whose
    feature is not finite is the farthest; a trial's that is not finite is left out.
    """
    n = len(references)
    if n == 0 or not math.isfinite(level):
        return None
    k = max(1, min(k, n))
    used = [(x, xs, w) for x, xs, w in features if w > 0 and math.isfinite(x)]
    if used:
        chosen = _nearest(level, references, k, used)
    else:
        # The k nearest of a sorted list: a window around the insertion point, grown on
        # the nearer side (ties to the better one).
        hi = bisect.bisect_left(references, (level, -math.inf))
        lo = hi
        while hi - lo < k:
            if lo == 0:
                hi += 1
            elif hi == n:
                lo -= 1
            elif level - references[lo - 1][0] <= references[hi][0] - level:
                lo -= 1
            else:
                hi += 1
        chosen = references[lo:hi]
    moves = [final - at for at, final in chosen]
    outcomes = tuple(sorted(level + d for d in moves))
    spread = _robust_sigma(moves)
    bandwidth = 1.06 * spread * len(moves) ** -0.2
    width = math.sqrt(bandwidth * bandwidth + noise * noise)
    return Forecast(
        outcomes=outcomes,
        center=statistics.median(outcomes),
        spread=spread,
        width=width,
    )


def _nearest(
    level: float,
    references: Sequence[tuple[float, float]],
    k: int,
    features: Sequence[tuple[float, Sequence[float], float]],
) -> list[tuple[float, float]]:
    """The ``k`` references nearest to the trial in level and ``features`` (see
    :func:`forecast`); ties to the earlier, i.e. better, level."""
    axes = [(level, [r[0] for r in references], 1.0), *features]
    score = [0.0] * len(references)
    for x, xs, w in axes:
        scale = w / (_robust_sigma([v for v in xs if math.isfinite(v)]) or 1.0)
        for i, v in enumerate(xs):
            d = (v - x) * scale if math.isfinite(v) else math.inf
            score[i] += d * d
    return [
        references[i] for i in heapq.nsmallest(k, range(len(references)), key=score.__getitem__)
    ]


def probability_below(f: Forecast, threshold: float) -> float:
    """The forecast's probability that the final value is at or below ``threshold``."""
    if f.width <= 0:
        return sum(o <= threshold for o in f.outcomes) / len(f.outcomes)
    scale = f.width * _SQRT2
    return math.fsum(0.5 * math.erfc((o - threshold) / scale) for o in f.outcomes) / len(f.outcomes)
