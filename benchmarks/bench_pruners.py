"""Pruners replayed on recorded learning curves: epochs saved vs quality kept.

Replays benchmarks/data/curves_<task>.json.gz (written by record_curves.py) through
Optuna pruners with ask/tell, no training. For each of ``--orders`` random trial orders,
every recorded configuration is one trial: ``t = study.ask()``; the user attrs
``epochs``/``n_seeds`` are set as the tuner sets them; the curve is reported
epoch by epoch and ``t.should_prune()`` asked after each report; a pruned trial is told
PRUNED, a finished one is told its final value. Deterministic: same data, same orders,
same numbers.

Metrics per pruner (mean over orders; "best" = lowest final val_loss):

* epochs: fraction of the epochs that no pruning trains;
* regret: (best final value among COMPLETE trials - best final value of all configs)
  / |best of all configs|, mean and worst order; NopPruner's is 0 by construction;
* best kept: fraction of orders in which the single best configuration completed;
* top-10% pruned: fraction of the true top-10 % configurations that were pruned.

Rows: the shipped ``PFLPruner`` (defaults), issue 3's reference rule (the prediction
alone, as first shipped, top_k 10), Median, Percentile(25), SuccessiveHalving, Hyperband,
Wilcoxon and Patient(Median), all with the
same start-up/warm-up (``n_startup_trials=10``, ``n_warmup_epochs``/``n_warmup_steps=10``)
where they have one; then ablations of the shipped rule. The verdicts check the PFL rows
against the targets: <= 50 % of the epochs, regret <= 2 % in every order, and a
trade-off at least as good as Median's.

WilcoxonPruner needs scipy; without it, a small exact/normal-approximation signed-rank
test defined here stands in (marked ``*``).

Run: ``python benchmarks/bench_pruners.py`` (~30 s on 2 cores), ``--quick`` for a smoke
run (1 order, 4 pruners), ``--pfl-module PATH`` to add a patched pruner.py's PFLPruner.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from record_curves import DATA_DIR, TASKS, load_curves  # noqa: E402

from lightning_hpo.attrs import EPOCHS_ATTR, N_SEEDS_ATTR  # noqa: E402
from lightning_hpo.pruner import PFLPruner, _is_worse  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore")

STARTUP, WARMUP = 10, 10
TOL_EPOCHS, TOL_REGRET = 0.01, 0.001  # 1 point of epochs, 0.1 % regret


# --------------------------------------------------------------------------- scipy-free Wilcoxon


class _SignedRank:
    """``scipy.stats.wilcoxon(d, alternative=..., zero_method="zsplit").pvalue`` without scipy.

    Exact null distribution for n <= 50 without ties/zeros (as scipy's ``method="auto"``),
    otherwise the normal approximation with tie correction.
    """

    class _Result:
        def __init__(self, pvalue):
            self.pvalue = pvalue

    @staticmethod
    def _ranks(a):
        order = sorted(range(len(a)), key=lambda i: a[i])
        ranks = [0.0] * len(a)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and a[order[j + 1]] == a[order[i]]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return ranks

    def wilcoxon(self, d, alternative="two-sided", zero_method="zsplit"):
        d = [float(x) for x in d]
        n = len(d)
        absd = [abs(x) for x in d]
        ranks = self._ranks(absd)
        r_plus = sum(r for r, x in zip(ranks, d) if x > 0) + 0.5 * sum(
            r for r, x in zip(ranks, d) if x == 0
        )
        has_ties = len(set(absd)) < n or any(x == 0 for x in d)
        if n <= 50 and not has_ties:
            # exact distribution of R+ : counts of subsets of {1..n} by sum
            total = n * (n + 1) // 2
            counts = [0] * (total + 1)
            counts[0] = 1
            for k in range(1, n + 1):
                for s in range(total, k - 1, -1):
                    counts[s] += counts[s - k]
            denom = 2.0**n
            r = int(round(r_plus))
            if alternative == "greater":
                p = sum(counts[r:]) / denom
            elif alternative == "less":
                p = sum(counts[: r + 1]) / denom
            else:
                p = min(1.0, 2 * min(sum(counts[r:]), sum(counts[: r + 1])) / denom)
            return self._Result(p)
        mean = n * (n + 1) / 4
        var = n * (n + 1) * (2 * n + 1) / 24
        # tie correction
        from collections import Counter

        var -= sum(t**3 - t for t in Counter(absd).values()) / 48
        if var <= 0:
            return self._Result(1.0)
        z = (r_plus - mean) / math.sqrt(var)
        sf = 0.5 * math.erfc(z / math.sqrt(2))
        cdf = 1 - sf
        p = (
            sf
            if alternative == "greater"
            else cdf
            if alternative == "less"
            else min(1.0, 2 * min(sf, cdf))
        )
        return self._Result(p)


try:
    import scipy.stats  # noqa: F401

    WILCOXON_SHIM = False
except ImportError:
    import optuna.pruners._wilcoxon as _w

    _w.ss = _SignedRank()
    WILCOXON_SHIM = True


# --------------------------------------------------------------------------- reference rules


class PFLReferenceRule(PFLPruner):
    """Issue 3's decision as first shipped: prune when the predicted final value is worse
    than the worst prediction among the ``top_k`` best completed trials, with no
    same-epoch check. Same predictor, start-up, warm-up and non-finite handling."""

    def evaluate(self, study, trial):
        d = super().evaluate(study, trial)
        if d.reason == "non-finite" or d.pfl is None or d.threshold is None:
            return d
        worse = _is_worse(d.pfl, d.threshold, study.direction)
        return dataclasses.replace(d, prune=worse, reason="worse" if worse else "ok")


class SameEpochOnly(PFLPruner):
    """Ablation, the rule of proposals/P_pfl_same_epoch_rule.diff: prune when the best
    value so far ranks outside the protected ``quantile`` over the same epochs; the
    prediction plays no part."""

    def evaluate(self, study, trial):
        d = super().evaluate(study, trial)
        if d.score is None or d.protected_bound is None or d.reason == "non-finite":
            return d
        worse = _is_worse(d.score, d.protected_bound, study.direction)
        return dataclasses.replace(d, prune=worse, reason="worse" if worse else "ok")


# --------------------------------------------------------------------------- replay

EXTRA_MODULE: str | None = None  # --pfl-module: a patched copy of lightning_hpo/pruner.py


def _extra_pfl():
    import importlib.util

    module = sys.modules.get("pfl_candidate")
    if module is None:
        spec = importlib.util.spec_from_file_location("pfl_candidate", EXTRA_MODULE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["pfl_candidate"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return module.PFLPruner


S, W = STARTUP, WARMUP
_DEFAULTS = PFLPruner()
PFL = (
    f"PFL (shipped defaults: startup={_DEFAULTS._n_startup_trials}, warmup={_DEFAULTS._n_warmup_epochs}, "
    f"top_k={_DEFAULTS._top_k}, quantile={_DEFAULTS._quantile:g}, overrule_quantile={_DEFAULTS._overrule_quantile:g})"
)
REFERENCE = f"PFL reference rule (issue 3: prediction only, top_k=10, startup={S}, warmup={W})"
MEDIAN = f"Median(startup={S}, warmup={W})"
CANDIDATE = f"PFL from --pfl-module (startup={S}, warmup={W}, other args default)"
RULES = (PFL, REFERENCE, CANDIDATE)  # rows checked against the targets


def pruners(quick: bool) -> dict[str, callable]:
    table = {
        "NopPruner": lambda: optuna.pruners.NopPruner(),
        PFL: lambda: PFLPruner(),
        REFERENCE: lambda: PFLReferenceRule(n_startup_trials=S, n_warmup_epochs=W, top_k=10),
        MEDIAN: lambda: optuna.pruners.MedianPruner(n_startup_trials=S, n_warmup_steps=W),
        f"Percentile(25, startup={S}, warmup={W})": lambda: optuna.pruners.PercentilePruner(
            25.0, n_startup_trials=S, n_warmup_steps=W
        ),
        "SuccessiveHalving(min_resource=1, rf=4)": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=4
        ),
        "Hyperband(max_resource=50)": lambda: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=50
        ),
        f"Wilcoxon(p=0.1, startup_steps={W}){'*' if WILCOXON_SHIM else ''}": lambda: (
            optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=W)
        ),
        "Patient(Median, patience=3)": lambda: optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(n_startup_trials=S, n_warmup_steps=W), patience=3
        ),
        "-- ablations of the shipped rule --": None,
        "PFL without overrule (overrule_quantile=None)": lambda: PFLPruner(
            n_startup_trials=S, n_warmup_epochs=W, overrule_quantile=None
        ),
        "same-epoch rank alone, quantile=0.5 (no prediction)": lambda: SameEpochOnly(
            n_startup_trials=S, n_warmup_epochs=W
        ),
        "PFL with top_k=10": lambda: PFLPruner(n_startup_trials=S, n_warmup_epochs=W, top_k=10),
        "PFL with startup=5": lambda: PFLPruner(n_startup_trials=5, n_warmup_epochs=W),
        "Median with startup=5": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=W
        ),
    }
    if EXTRA_MODULE:
        table["-- --pfl-module --"] = None
        table[CANDIDATE] = lambda: _extra_pfl()(n_startup_trials=S, n_warmup_epochs=W)
    if quick:
        keep = ("NopPruner", PFL, REFERENCE, MEDIAN, "-- --pfl", CANDIDATE)
        table = {k: v for k, v in table.items() if k in keep}
    return table


@dataclass
class Replay:
    epochs_run: list[int]  # per config index
    completed: list[bool]
    seconds: float


def replay(curves: list[list[float]], order: list[int], make_pruner, epochs: int) -> Replay:
    # A fixed study name: HyperbandPruner assigns brackets from a hash of it.
    study = optuna.create_study(
        study_name="replay",
        direction="minimize",
        pruner=make_pruner(),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    epochs_run = [0] * len(curves)
    completed = [False] * len(curves)
    start = time.perf_counter()
    for idx in order:
        values = curves[idx]
        t = study.ask()
        t.set_user_attr(EPOCHS_ATTR, epochs)
        t.set_user_attr(N_SEEDS_ATTR, 1)
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


def _job(args):
    task, name, order_seed, quick = args
    data = load_curves(task)
    curves = [[v if v is not None else math.nan for v in c["values"]] for c in data["configs"]]
    order = list(range(len(curves)))
    random.Random(order_seed).shuffle(order)
    make = pruners(quick)[name]
    return task, name, order_seed, replay(curves, order, make, data["epochs"])


def summarize(curves, results: list[Replay], epochs: int) -> dict:
    finals = [c[-1] for c in curves]
    best_all = min(f for f in finals if math.isfinite(f))
    best_idx = finals.index(best_all)
    ranked = sorted(
        (i for i in range(len(finals)) if math.isfinite(finals[i])), key=lambda i: finals[i]
    )
    top = ranked[: max(1, len(ranked) // 10)]
    total = epochs * len(curves)
    out = {"epochs": [], "regret": [], "kept": [], "fp": [], "sec": []}
    for r in results:
        found = min(finals[i] for i in range(len(finals)) if r.completed[i])
        out["epochs"].append(sum(r.epochs_run) / total)
        out["regret"].append((found - best_all) / abs(best_all))
        out["kept"].append(1.0 if r.completed[best_idx] else 0.0)
        out["fp"].append(sum(not r.completed[i] for i in top) / len(top))
        out["sec"].append(r.seconds)
    return out


def verdict(task: str, label: str, rule: dict, median: dict) -> str:
    """The targets: <= 50 % of the epochs, regret <= 2 % in every order, and a trade-off at
    least as good as Median's (no more epochs and no more mean regret, within TOL_EPOCHS /
    TOL_REGRET: differences below those are replay noise)."""
    fe, fr, fw = (
        statistics.fmean(rule["epochs"]),
        statistics.fmean(rule["regret"]),
        max(rule["regret"]),
    )
    me, mr = statistics.fmean(median["epochs"]), statistics.fmean(median["regret"])
    ok_epochs, ok_regret = fe <= 0.5, fw <= 0.02
    dominates = fe <= me + TOL_EPOCHS and fr <= mr + TOL_REGRET
    met = "MEETS" if ok_epochs and ok_regret and dominates else "MISSES"
    return (
        f"{task}: {label}: {met} the targets: epochs {100 * fe:.1f}% (<= 50%: {'yes' if ok_epochs else 'no'}), "
        f"regret {100 * fr:.2f}% mean, {100 * fw:.2f}% worst order (<= 2%: {'yes' if ok_regret else 'no'}); "
        f"Median: epochs {100 * me:.1f}%, regret {100 * mr:.2f}% -> trade-off {'at least as good' if dominates else 'worse'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument(
        "--orders", type=int, default=5, help="random trial orders (default: %(default)s)"
    )
    ap.add_argument("--processes", type=int, default=cpu_count())
    ap.add_argument(
        "--pruners", default=None, help="comma list of name prefixes to run (default: all)"
    )
    ap.add_argument(
        "--pfl-module",
        help="path of a patched lightning_hpo/pruner.py whose PFLPruner to replay as an extra row",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 order, 4 pruners")
    args = ap.parse_args()
    global EXTRA_MODULE
    EXTRA_MODULE = str(Path(args.pfl_module).resolve()) if args.pfl_module else None
    if args.quick:
        args.orders = 1
    tasks = [t for t in args.tasks.split(",") if (DATA_DIR / f"curves_{t}.json.gz").exists()]
    if not tasks:
        sys.exit(f"no recorded curves in {DATA_DIR}: run benchmarks/record_curves.py first")
    table = pruners(args.quick)
    names = [
        n
        for n, f in table.items()
        if f is not None and (not args.pruners or n.startswith(tuple(args.pruners.split(","))))
    ]
    jobs = [
        (task, name, seed, args.quick)
        for task in tasks
        for name in names
        for seed in range(args.orders)
    ]
    start = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(args.processes) as pool:
        done = pool.map(_job, jobs, chunksize=1)
    by = {}
    for task, name, _seed, r in done:
        by.setdefault((task, name), []).append(r)
    print(
        f"replayed {len(jobs)} (task, pruner, order) studies in {time.perf_counter() - start:.0f} s on {args.processes} processes"
    )

    verdicts = []
    for task in tasks:
        data = load_curves(task)
        curves = [[v if v is not None else math.nan for v in c["values"]] for c in data["configs"]]
        E = data["epochs"]
        rows = []
        summary = {}
        for name in table:
            if table[name] is None:
                rows.append((name, "", "", "", "", "", ""))
                continue
            if (task, name) not in by:
                continue
            s = summarize(curves, by[(task, name)], E)
            summary[name] = s
            mean = statistics.fmean
            rows.append(
                (
                    name,
                    f"{100 * mean(s['epochs']):.1f}%",
                    f"{100 * mean(s['regret']):.2f}%",
                    f"{100 * max(s['regret']):.2f}%",
                    f"{mean(s['kept']):.2f}",
                    f"{100 * mean(s['fp']):.1f}%",
                    f"{mean(s['sec']):.1f}",
                )
            )
        finals = sorted(c[-1] for c in curves if math.isfinite(c[-1]))
        print_table(
            [
                "pruner",
                "epochs vs none",
                "regret (mean)",
                "regret (worst order)",
                "best kept",
                "top-10% pruned",
                "replay s",
            ],
            rows,
            title=f"{task}: {len(curves)} configs x {E} epochs, {args.orders} trial orders; best final val_loss {finals[0]:.5g}, "
            f"top-10% cut {finals[max(0, len(finals) // 10 - 1)]:.5g}, median {finals[len(finals) // 2]:.5g}",
        )
        if MEDIAN in summary:
            verdicts += [
                verdict(task, name, summary[name], summary[MEDIAN])
                for name in RULES
                if name in summary
            ]
    print(
        f"\nverdicts (targets: epochs <= 50%, regret <= 2% in every order, and epochs <= Median's + "
        f"{100 * TOL_EPOCHS:.0f} pt with mean regret <= Median's + {100 * TOL_REGRET:.1f} %):"
    )
    for v in verdicts:
        print(v)
    if WILCOXON_SHIM:
        print(
            "* scipy is not installed: WilcoxonPruner ran on this file's signed-rank test (exact for n <= 50 without ties)."
        )


if __name__ == "__main__":
    main()
