"""How well is a trial's final value predicted from the first 20 %, 40 % or 60 % of its run?

On the recorded curves (benchmarks/data/curves_<task>.json.gz, record_curves.py), for each
task and share of the run, ``--draws`` times: ``--completed`` configurations drawn at
random play the study's completed trials, and every other configuration's final value is
predicted from its curve up to that epoch by

* ``PFL extrapolation``: :func:`lightning_hpo.pruners.curves.predict_final_loss` (the
  fitted curve the pruner used before its forecast was calibrated on the study);
* ``last value``: the curve's value at that epoch;
* ``study-calibrated``: :func:`lightning_hpo.pruners.calibration.forecast`, the median
  of ``x + d_j`` over the 10 completed trials nearest in level at the same epoch, ``d_j``
  being how each of them moved from there to its end;
* ``study-calibrated + trend``: the same, the 10 nearest in level and recent trend (the
  level's change over the last third of the epochs so far) with the trend weighted by
  ``SHAPE_WEIGHT``, as PFLPruner matches them (its ``shape_weight``).

Figures per task, share and predictor, pooled over the draws:

* ``abs err / IQR``: median absolute error of the predicted final value, divided by the
  interquartile range of the task's final values (scale-free across tasks);
* ``rank rho``: Spearman's rank correlation of predicted and real finals (1 = the
  predictor orders the configurations as they end), median over draws;
* for the calibrated forecasts, ``PIT < 0.1`` and ``PIT > 0.9``: how often the real final
  falls below the forecast's 10 % quantile or above its 90 % one (10 % each when the
  forecast's spread is calibrated; more means the band is too narrow).

Run: ``python benchmarks/bench_extrapolation.py`` (under a minute), ``--tasks a,b``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table  # noqa: E402
from record_curves import DATA_DIR, TASKS, load_curves  # noqa: E402

from lightning_hpo.pruners.calibration import forecast, levels, probability_below  # noqa: E402
from lightning_hpo.pruners.curves import noise_level, predict_final_loss  # noqa: E402

SHARES = (0.2, 0.4, 0.6)
NEIGHBOURS = 10
SHAPE_WEIGHT = 3.0
TREND = "study-calibrated + trend"


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = math.fsum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(math.fsum((x - ma) ** 2 for x in ra) * math.fsum((y - mb) ** 2 for y in rb))
    return cov / var if var else math.nan


def task_study(task: str, completed: int, draws: int) -> list[tuple]:
    data = load_curves(task)
    curves = [[v if v is not None else math.nan for v in c["values"]] for c in data["configs"]]
    curves = [c for c in curves if all(math.isfinite(v) for v in c)]
    epochs = data["epochs"]
    finals = [c[-1] for c in curves]
    q = statistics.quantiles(finals, n=4)
    iqr = q[2] - q[0]
    level_of = [levels(c) for c in curves]
    rows = []
    for share in SHARES:
        e = max(1, round(share * epochs))
        errors = {"PFL extrapolation": [], "last value": [], "study-calibrated": [], TREND: []}
        rhos = {name: [] for name in errors}
        pit = {"study-calibrated": [], TREND: []}
        window = max(2, e // 3)
        # The level's change over the last third of the epochs so far (as PFLPruner's).
        trend = [lv[e - 1] - lv[e - 1 - window] if e > window else math.nan for lv in level_of]

        for draw in range(draws):
            idx = list(range(len(curves)))
            random.Random(draw).shuffle(idx)
            done, rest = idx[:completed], idx[completed:]
            with_trend = sorted((level_of[j][e - 1], finals[j], trend[j]) for j in done)
            refs = [r[:2] for r in with_trend]
            trends = [r[2] for r in with_trend]
            preds = {name: [] for name in errors}
            for i in rest:
                cut = curves[i][:e]
                f = forecast(level_of[i][e - 1], refs, NEIGHBOURS, noise_level(cut))
                g = forecast(
                    level_of[i][e - 1],
                    refs,
                    NEIGHBOURS,
                    noise_level(cut),
                    features=[(trend[i], trends, SHAPE_WEIGHT)],
                )
                preds["PFL extrapolation"].append(predict_final_loss(cut, epochs))
                preds["last value"].append(cut[-1])
                preds["study-calibrated"].append(f.center)
                preds[TREND].append(g.center)
                pit["study-calibrated"].append(probability_below(f, finals[i]))
                pit[TREND].append(probability_below(g, finals[i]))
            truth = [finals[i] for i in rest]
            for name, p in preds.items():
                errors[name] += [abs(a - b) / iqr for a, b in zip(p, truth)]
                rhos[name].append(spearman(p, truth))
        for name in errors:
            calibrated = pit.get(name)
            rows.append(
                (
                    task,
                    f"{share:.0%} (epoch {e}/{epochs})",
                    name,
                    f"{statistics.median(errors[name]):.3f}",
                    f"{statistics.median(rhos[name]):.3f}",
                    f"{sum(p < 0.1 for p in calibrated) / len(calibrated):.0%}"
                    if calibrated
                    else "",
                    f"{sum(p > 0.9 for p in calibrated) / len(calibrated):.0%}"
                    if calibrated
                    else "",
                )
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--completed", type=int, default=30, help="completed trials per draw")
    ap.add_argument("--draws", type=int, default=10)
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if (DATA_DIR / f"curves_{t}.json.gz").exists()]
    rows = []
    for task in tasks:
        rows += task_study(task, args.completed, args.draws)
    print_table(
        ("task", "at", "predictor", "abs err / IQR", "rank rho", "PIT < 0.1", "PIT > 0.9"),
        rows,
        title=f"final value predicted from part of the run: {args.completed} completed "
        f"trials per draw, {args.draws} draws, every other configuration predicted",
    )


if __name__ == "__main__":
    main()
