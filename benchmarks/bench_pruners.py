"""Pruners replayed on recorded learning curves: epochs saved vs quality kept, per task.

Replays benchmarks/data/curves_<task>.json.gz (written by record_curves.py) through
Optuna pruners with ask/tell, no training. For each of ``--orders`` random trial orders,
every recorded configuration is one trial: ``t = study.ask()``; the user attrs
``epochs``, ``n_seeds`` and ``lr_schedule`` are set as the tuner sets them (the schedule
the task was recorded under: a constant rate writes ``{"name": None, ...}``); the curve (the
seeds' mean per epoch where several seeds were recorded, as a fused trial reports it) is
reported epoch by epoch and ``t.should_prune()`` asked after each report; a pruned trial
is told PRUNED, a finished one its final value. Deterministic: same data, same orders,
same numbers.

Figures per pruner and task, over the orders ("best" = lowest final val_loss):

* epochs: fraction of the epochs that no pruning trains, median over orders;
* regret: (best final value among COMPLETE trials - best final value of all configs)
  / |best of all configs|: mean, median and worst order;
* best kept: in how many orders the single best configuration completed;
* top-10% pruned: fraction of the true top-10 % configurations that were pruned (mean).

PFL's defaults are chosen by leave-one-task-out: every setting of ``GRID`` is replayed on
every task in ``--grid-orders`` selection orders (seeds 1000..., apart from the table's
0...), and the PFL row of a task is the setting that scores best on the OTHER tasks
(``select``), replayed again in the table's orders, so that row's figures are out of
sample. ``select``'s criterion is the WORST task, not the average: each task's summed
relative shortfall from the targets (``TARGETS``, and a mean regret no higher than
MedianPruner's on the same orders), compared worst task first, then second worst, and so
on; then the fewest mean epochs. The shipped defaults are the setting selected on all tasks together, which the
script checks against ``PFLPruner()``.

Rows: PFL (left-out setting), PFLPruner() as shipped (in sample), NopPruner, Median,
Percentile(25), SuccessiveHalving, Hyperband, Wilcoxon and Patient(Median), all with
start-up 10 trials and warm-up 10 epochs where they have them. The verdicts check the
PFL row against the targets; where a task misses one, the script prints the
epochs-vs-regret trade-off of PFL (every grid setting on that task, in sample) and of
Median/Percentile pruners on it, and where the task's best configuration stood while it
trained (``best_trace``: its rank by level at shares of the run, and its lead over the
second best), which says whether any pruner could have told it from the rest.

Needs scipy (``pip install -e .[bench]``) for Optuna's WilcoxonPruner.

Run: ``python benchmarks/bench_pruners.py`` (36 minutes on 2 cores shared with other jobs, most of it
the grid), ``--quick`` for a smoke run (2 orders, 2 grid settings),
``--single-seed`` to replay the first seed's curve instead of the seeds' mean, ``--trace``
for ``best_trace`` of every task alone (a second).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from _common import cpu_count, print_table  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from record_curves import DATA_DIR, TASKS, load_curves, lr_schedule_attr  # noqa: E402

from lightning_hpo.attrs import EPOCHS_ATTR, LR_SCHEDULE_ATTR, N_SEEDS_ATTR  # noqa: E402
from lightning_hpo.pruners.calibration import levels  # noqa: E402
from lightning_hpo.pruners.pfl import PFLPruner  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore")

S, W = 10, 10  # start-up trials and warm-up epochs of every pruner that has them
GRID_ORDER_SEED = 1000  # the selection orders are seeds 1000.., the table's 0..
TARGETS = {"epochs": 0.50, "kept": 0.8, "regret": 0.01}
# Dominance allows for replay noise: another pruner dominates PFL only with at least
# 1 point fewer epochs AND at least 0.1 % (of the best value) less mean regret; PFL's
# regret is "no higher than Median's" within the same 0.1 %.
TOL_EPOCHS, TOL_REGRET = 0.01, 0.001

# --------------------------------------------------------------------------- the PFL grid

# The warm-up is a share of the run (warmup_fraction; 0.1/0.2 are 3/6 of 30 epochs and
# 5/10 of 50), so that one setting fits the 30- and the 50-epoch tasks alike. The rank to
# beat is a share of the study's finished trials (top_fraction) with a floor of 2 (top_k),
# so that a 20-trial study can prune and a long one is not made stricter and stricter.
GRID: list[dict] = [
    {
        "n_warmup_epochs": 0,
        "warmup_fraction": w,
        "top_k": 2,
        "top_fraction": q,
        "min_probability": p,
        "neighbours": m,
        "shape_weight": s,
    }
    for w, q, p, m, s in itertools.product(
        (0.1, 0.2),
        (0.05, 0.1, 0.2),
        (0.02, 0.05, 0.1),
        (5, 10),
        (0.0, 3.0),
    )
]


def grid_label(kwargs: dict) -> str:
    share, fixed = kwargs["warmup_fraction"], kwargs["n_warmup_epochs"]
    warmup = f"{share:g} of the run" + (f" (>= {fixed})" if fixed else "") if share else fixed
    top = (
        kwargs["top_k"]
        if kwargs.get("top_fraction") is None
        else (f"{kwargs['top_fraction']:g} (>= {kwargs['top_k']})")
    )
    return (
        f"w={warmup}, top={top}, p={kwargs['min_probability']:g}, "
        f"m={kwargs['neighbours']}, shape={kwargs.get('shape_weight', 0):g}"
    )


# --------------------------------------------------------------------------- other pruners


def pruner_table(epochs: int) -> dict:
    """Label -> factory of every non-PFL pruner the table reports."""
    return {
        "NopPruner": optuna.pruners.NopPruner,
        f"Median(startup={S}, warmup={W})": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=S, n_warmup_steps=W
        ),
        f"Percentile(25, startup={S}, warmup={W})": lambda: optuna.pruners.PercentilePruner(
            25.0, n_startup_trials=S, n_warmup_steps=W
        ),
        "SuccessiveHalving(min_resource=1, rf=4)": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=4
        ),
        f"Hyperband(max_resource={epochs})": lambda: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs
        ),
        f"Wilcoxon(p=0.1, startup_steps={W})": lambda: optuna.pruners.WilcoxonPruner(
            p_threshold=0.1, n_startup_steps=W
        ),
        "Patient(Median, patience=3)": lambda: optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(n_startup_trials=S, n_warmup_steps=W), patience=3
        ),
    }


MEDIAN = f"Median(startup={S}, warmup={W})"


def tradeoff_table() -> dict:
    """Median and percentile pruners from lenient to aggressive, for the trade-off curve."""
    out = {}
    for p in (90.0, 75.0, 60.0, 50.0, 40.0, 25.0):
        for w in (5, 10, 15):
            out[f"Percentile({p:g}, warmup={w})"] = lambda p=p, w=w: (
                optuna.pruners.PercentilePruner(p, n_startup_trials=S, n_warmup_steps=w)
            )
    return out


def make_pruner(epochs: int, key: tuple):
    kind, ident = key
    if kind == "grid":
        return PFLPruner(n_startup_trials=S, **GRID[ident])
    if kind == "shipped":
        return PFLPruner()
    if kind == "tradeoff":
        return tradeoff_table()[ident]()
    return pruner_table(epochs)[ident]()


# --------------------------------------------------------------------------- replay


@dataclass
class Replay:
    epochs_run: list[int]  # per config index
    completed: list[bool]
    seconds: float


def task_curves(task: str, single_seed: bool) -> tuple[list[list[float]], dict]:
    data = load_curves(task)
    key = "seed_values" if single_seed and "seed_values" in data["configs"][0] else None
    raw = [c[key][0] if key else c["values"] for c in data["configs"]]
    curves = [[v if v is not None else math.nan for v in c] for c in raw]
    return curves, data


def replay(
    curves: list[list[float]], order: list[int], pruner, epochs: int, n_seeds: int, schedule: dict
):
    # A fixed study name: HyperbandPruner assigns brackets from a hash of it.
    study = optuna.create_study(
        study_name="replay",
        direction="minimize",
        pruner=pruner,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    epochs_run = [0] * len(curves)
    completed = [False] * len(curves)
    start = time.perf_counter()
    for idx in order:
        values = curves[idx]
        t = study.ask()
        t.set_user_attr(EPOCHS_ATTR, epochs)
        t.set_user_attr(N_SEEDS_ATTR, n_seeds)
        t.set_user_attr(LR_SCHEDULE_ATTR, schedule)
        pruned = False
        for step, v in enumerate(values):
            t.report(v, step)
            epochs_run[idx] = step + 1
            if t.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(t, state=TrialState.PRUNED)
        else:
            study.tell(t, values[-1])
            completed[idx] = True
    return Replay(epochs_run, completed, time.perf_counter() - start)


SINGLE_SEED = False


def _job(args):
    task, key, order_seed = args
    curves, data = task_curves(task, SINGLE_SEED)
    order = list(range(len(curves)))
    random.Random(order_seed).shuffle(order)
    n_seeds = 1 if SINGLE_SEED else len(data.get("seeds", [data["seed"]]))
    pruner = make_pruner(data["epochs"], key)
    # The first recordings were all cosine-annealed and did not store their schedule.
    schedule = data.get("lr_schedule") or lr_schedule_attr("cosine", data["epochs"])
    return task, key, order_seed, replay(curves, order, pruner, data["epochs"], n_seeds, schedule)


@dataclass(frozen=True)
class Figures:
    epochs: float  # median over orders
    regret_mean: float
    regret_median: float
    regret_worst: float
    kept: float  # fraction of orders
    top_pruned: float  # mean over orders
    orders: int


def summarize(curves: list[list[float]], results: list[Replay]) -> Figures:
    finals = [c[-1] for c in curves]
    best_all = min(f for f in finals if math.isfinite(f))
    best_idx = finals.index(best_all)
    ranked = sorted(
        (i for i in range(len(finals)) if math.isfinite(finals[i])), key=lambda i: finals[i]
    )
    top = ranked[: max(1, len(ranked) // 10)]
    total = len(curves[0]) * len(curves)
    epochs, regret, kept, top_pruned = [], [], [], []
    for r in results:
        found = min(finals[i] for i in range(len(finals)) if r.completed[i])
        epochs.append(sum(r.epochs_run) / total)
        regret.append((found - best_all) / abs(best_all))
        kept.append(1.0 if r.completed[best_idx] else 0.0)
        top_pruned.append(sum(not r.completed[i] for i in top) / len(top))
    return Figures(
        epochs=statistics.median(epochs),
        regret_mean=statistics.fmean(regret),
        regret_median=statistics.median(regret),
        regret_worst=max(regret),
        kept=statistics.fmean(kept),
        top_pruned=statistics.fmean(top_pruned),
        orders=len(results),
    )


# --------------------------------------------------------------------------- selection


def misses(f: Figures, median: Figures | None = None) -> dict[str, float]:
    """Each missed target and by how much, relative to the target (a mean regret above
    ``median``'s, MedianPruner's on the same orders, relative to the regret target)."""
    out = {}
    if f.epochs > TARGETS["epochs"]:
        out["epochs"] = (f.epochs - TARGETS["epochs"]) / TARGETS["epochs"]
    if f.kept < TARGETS["kept"]:
        out["kept"] = (TARGETS["kept"] - f.kept) / TARGETS["kept"]
    if f.regret_mean > TARGETS["regret"]:
        out["regret"] = (f.regret_mean - TARGETS["regret"]) / TARGETS["regret"]
    if median is not None and f.regret_mean > median.regret_mean + TOL_REGRET:
        out["median"] = (f.regret_mean - median.regret_mean) / TARGETS["regret"]
    return out


SAFETY = ("kept", "regret", "median")  # the targets about the answer, not its cost


def select(
    figures: dict[tuple[str, int], Figures], medians: dict[str, Figures], tasks: list[str]
) -> int:
    """The grid setting whose WORST task on ``tasks`` does best, safety first: the tasks'
    summed relative shortfalls on the answer's targets (the best kept, the regret, no more
    regret than Median's) compared worst first (the smallest worst shortfall, then the
    smallest second worst, and so on), then the same for the epochs target, then the fewest
    mean epochs; ties go to the earlier setting. A setting that saves epochs by losing the
    best configuration on one task never wins over one that keeps it everywhere."""

    def worst_first(i: int, targets) -> tuple:
        ms = [misses(figures[(t, i)], medians.get(t)) for t in tasks]
        shortfalls = (sum(v for k, v in m.items() if k in targets) for m in ms)
        return tuple(sorted((round(x, 6) for x in shortfalls), reverse=True))

    def key(i: int):
        return (
            worst_first(i, SAFETY),
            worst_first(i, ("epochs",)),
            round(statistics.fmean(figures[(t, i)].epochs for t in tasks), 6),
            i,
        )

    candidates = {i for (_t, i) in figures}
    return min(candidates, key=key)


def dominators(pfl: Figures, others: dict[str, Figures]) -> list[str]:
    return [
        name
        for name, f in others.items()
        if f.epochs < pfl.epochs - TOL_EPOCHS and f.regret_mean < pfl.regret_mean - TOL_REGRET
    ]


# --------------------------------------------------------------------------- why a task misses

TRACE_SHARES = (0.2, 0.4, 0.6, 0.8, 1.0)


def best_trace(curves: list[list[float]]) -> str:
    """Where the best configuration stood while it trained: its rank among all configs by
    level (the median of the last three values, what PFL compares) at shares of the run,
    and how far the second-best final value is behind it. A best configuration whose
    level is mid-field until its last epochs, or whose final value barely beats the next,
    is one that no pruner can tell from the rest before it ends."""
    finals = [c[-1] if math.isfinite(c[-1]) else math.inf for c in curves]
    order = sorted(range(len(curves)), key=finals.__getitem__)
    best, second = order[0], order[1]
    curve_levels = [levels(c) for c in curves]
    n = len(curves[0])
    ranks = []
    for share in TRACE_SHARES:
        e = max(0, round(share * n) - 1)
        at = [lv[e] if math.isfinite(lv[e]) else math.inf for lv in curve_levels]
        ranks.append(f"{100 * share:.0f} %: {1 + sum(x < at[best] for x in at)}")
    gap = (finals[second] - finals[best]) / abs(finals[best])
    return (
        f"the best configuration's rank of {len(curves)} by level at "
        + ", ".join(ranks)
        + f"; the second-best final value is {100 * gap:.2f} % behind it"
    )


# --------------------------------------------------------------------------- output


def row(name: str, f: Figures) -> tuple:
    return (
        name,
        f"{100 * f.epochs:.1f}%",
        f"{100 * f.regret_mean:.2f}%",
        f"{100 * f.regret_median:.2f}%",
        f"{100 * f.regret_worst:.2f}%",
        f"{round(f.kept * f.orders)}/{f.orders}",
        f"{100 * f.top_pruned:.0f}%",
    )


HEADERS = (
    "pruner",
    "epochs (median)",
    "regret mean",
    "regret median",
    "regret worst",
    "best kept",
    "top-10% pruned",
)


def pareto(points: list[tuple[str, Figures]]) -> list[tuple[str, Figures]]:
    """The points no other point beats on both epochs and mean regret, by epochs."""
    front = [
        (n, f)
        for n, f in points
        if not any(
            (g.epochs <= f.epochs and g.regret_mean < f.regret_mean)
            or (g.epochs < f.epochs and g.regret_mean <= f.regret_mean)
            for _m, g in points
        )
    ]
    return sorted(front, key=lambda p: p[1].epochs)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument(
        "--orders", type=int, default=10, help="trial orders of the table (default: %(default)s)"
    )
    ap.add_argument(
        "--grid-orders",
        type=int,
        default=4,
        help="other trial orders, on which every PFL setting is replayed to choose the "
        "left-out settings (default: %(default)s)",
    )
    ap.add_argument("--processes", type=int, default=cpu_count())
    ap.add_argument(
        "--single-seed",
        action="store_true",
        help="replay the first seed's curve where several seeds were recorded",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 orders, 2 grid settings")
    ap.add_argument("--dump", type=Path, help="also write every figure to this JSON file")
    ap.add_argument(
        "--trace",
        action="store_true",
        help="only print where each task's best configuration stood while it trained, and exit",
    )
    args = ap.parse_args()
    global SINGLE_SEED, GRID
    SINGLE_SEED = args.single_seed
    if args.quick:
        args.orders, args.grid_orders = 2, 1
        GRID = GRID[:2]
    tasks = [t for t in args.tasks.split(",") if (DATA_DIR / f"curves_{t}.json.gz").exists()]
    if not tasks:
        sys.exit(f"no recorded curves in {DATA_DIR}: run benchmarks/record_curves.py first")
    if args.trace:
        for t in tasks:
            print(f"{t}: {best_trace(task_curves(t, SINGLE_SEED)[0])}")
        return
    try:
        import scipy.stats  # noqa: F401  (WilcoxonPruner's test)
    except ImportError:
        sys.exit("bench_pruners needs scipy for WilcoxonPruner: pip install -e .[bench]")
    epochs_of = {t: task_curves(t, False)[1]["epochs"] for t in tasks}
    start = time.perf_counter()
    ctx = mp.get_context("fork")
    table_orders = range(args.orders)
    grid_orders = range(GRID_ORDER_SEED, GRID_ORDER_SEED + args.grid_orders)

    def run(keys_of_task, orders) -> dict:
        jobs = [(t, k, o) for t in tasks for k in dict.fromkeys(keys_of_task(t)) for o in orders]
        with ctx.Pool(args.processes) as pool:
            done = pool.map(_job, jobs, chunksize=1)
        by: dict = {}
        for task, key, _o, r in done:
            by.setdefault((task, key), []).append(r)
        return {k: summarize(task_curves(k[0], SINGLE_SEED)[0], rs) for k, rs in by.items()}

    # 1. Every setting on every task, on the selection orders; leave one task out.
    searched = run(
        lambda t: [("grid", i) for i in range(len(GRID))] + [("other", MEDIAN)], grid_orders
    )
    grid = {(t, i): searched[(t, ("grid", i))] for t in tasks for i in range(len(GRID))}
    medians = {t: searched[(t, ("other", MEDIAN))] for t in tasks}
    chosen = {t: select(grid, medians, [u for u in tasks if u != t] or [t]) for t in tasks}
    overall = select(grid, medians, tasks)

    # 2. The table, on its own orders: the left-out setting, the shipped one, the others.
    figures = run(
        lambda t: (
            [("grid", chosen[t]), ("shipped", 0)]
            + [("other", n) for n in pruner_table(epochs_of[t])]
        ),
        table_orders,
    )
    table_median = {t: figures[(t, ("other", MEDIAN))] for t in tasks}
    missed = [t for t in tasks if misses(figures[(t, ("grid", chosen[t]))], table_median[t])]
    if missed:  # Median's side of the trade-off, on the selection orders like the grid
        searched.update(
            run(
                lambda t: [("tradeoff", n) for n in tradeoff_table()] if t in missed else [],
                grid_orders,
            )
        )
    print(
        f"replayed {len(tasks)} task(s): {len(GRID)} PFL settings x {args.grid_orders} selection "
        f"orders, then the table's pruners x {args.orders} other orders, in "
        f"{time.perf_counter() - start:.0f} s on {args.processes} processes"
        f"{'; first seed alone' if SINGLE_SEED else ''}"
    )
    print("\nPFL settings chosen leave-one-task-out (tuned on the other tasks):")
    for t in tasks:
        print(f"  left out {t}: {grid_label(GRID[chosen[t]])}")
    shipped = PFLPruner()
    shipped_kwargs = {k: getattr(shipped, f"_{k}") for k in GRID[0]}
    same = GRID[overall] == shipped_kwargs
    print(
        f"  selected on all tasks: {grid_label(GRID[overall])}; PFLPruner() defaults: "
        f"{grid_label(shipped_kwargs)} ({'the same' if same else 'DIFFERENT'})"
    )

    verdicts = []
    for t in tasks:
        curves, data = task_curves(t, SINGLE_SEED)
        epochs = data["epochs"]
        pfl = figures[(t, ("grid", chosen[t]))]
        rows = [row(f"PFL, left out ({grid_label(GRID[chosen[t]])})", pfl)]
        rows.append(row("  PFLPruner() as shipped (in sample)", figures[(t, ("shipped", 0))]))
        named = {n: figures[(t, ("other", n))] for n in pruner_table(epochs)}
        rows += [row(n, f) for n, f in named.items()]
        finals = sorted(x[-1] for x in curves if math.isfinite(x[-1]))
        seeds = 1 if SINGLE_SEED else len(data.get("seeds", [data["seed"]]))
        schedule = data.get("schedule", "cosine")
        print_table(
            HEADERS,
            rows,
            title=f"{t}: {len(curves)} configs x {epochs} epochs, "
            f"{'mean of ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed'}, {schedule} lr, "
            f"{args.orders} trial orders; best final val_loss {finals[0]:.5g}, "
            f"top-10% cut {finals[max(0, len(finals) // 10 - 1)]:.5g}, median {finals[len(finals) // 2]:.5g}",
        )
        m = misses(pfl, table_median[t])
        beaten_by = dominators(pfl, {n: f for n, f in named.items() if n != "NopPruner"})
        verdicts.append(
            f"{t}: epochs {100 * pfl.epochs:.1f}% (<= 50%: {'no' if 'epochs' in m else 'yes'}), "
            f"best kept {round(pfl.kept * pfl.orders)}/{pfl.orders} (>= 80%: {'no' if 'kept' in m else 'yes'}), "
            f"mean regret {100 * pfl.regret_mean:.2f}% (<= 1%: {'no' if 'regret' in m else 'yes'}; "
            f"<= Median's {100 * table_median[t].regret_mean:.2f}%: {'no' if 'median' in m else 'yes'}), "
            f"dominated by: {', '.join(beaten_by) or 'none'} -> "
            f"{'MEETS' if not m and not beaten_by else 'MISSES'} the targets"
        )
        if t in missed:
            print(f"{t}: {best_trace(curves)}")
            pfl_points = [(grid_label(GRID[i]), grid[(t, i)]) for i in range(len(GRID))]
            med_points = [(n, searched[(t, ("tradeoff", n))]) for n in tradeoff_table()]
            print_table(
                HEADERS,
                [row(f"PFL {n}", f) for n, f in pareto(pfl_points)]
                + [row(n, f) for n, f in pareto(med_points)],
                title=f"{t}: trade-off, epochs vs mean regret, on the {args.grid_orders} selection "
                f"orders (Pareto fronts, in sample): every PFL grid setting, then "
                f"Percentile(p, warm-up w) with start-up {S} (Median = Percentile(50))",
            )
    if args.dump:
        args.dump.write_text(
            json.dumps(
                {
                    "grid": GRID,
                    "chosen": chosen,
                    "overall": overall,
                    "figures": [
                        {
                            "task": t,
                            "kind": k[0],
                            "id": k[1],
                            **dataclasses.asdict(f),
                            "order_set": "table",
                        }
                        for (t, k), f in figures.items()
                    ]
                    + [
                        {
                            "task": t,
                            "kind": k[0],
                            "id": k[1],
                            **dataclasses.asdict(f),
                            "order_set": "selection",
                        }
                        for (t, k), f in searched.items()
                    ],
                },
                indent=1,
            )
        )
    print(
        "\nverdicts (PFL left out; targets: epochs <= 50 % median over orders, best kept in >= 80 % "
        "of orders, mean regret <= 1 % and <= Median's, not dominated by another pruner by >= "
        f"{100 * TOL_EPOCHS:.0f} pt epochs and >= {100 * TOL_REGRET:.1f} % regret):"
    )
    for v in verdicts:
        print(v)
    if len(set(chosen.values())) > 1:
        print(
            f"(the left-out selections differ between tasks: {len(set(chosen.values()))} settings)"
        )


if __name__ == "__main__":
    main()
