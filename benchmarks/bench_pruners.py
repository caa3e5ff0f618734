"""Pruners replayed on recorded learning curves: epochs saved vs quality kept.

Replays benchmarks/data/curves_<task>.json.gz (written by record_curves.py) through
Optuna pruners with ask/tell, no training. For each of ``--orders`` random trial orders,
every recorded configuration is one trial: ``t = study.ask()``; the user attrs
``epochs_per_seed``/``n_seeds`` are set as the tuner sets them; the curve is reported
epoch by epoch and ``t.should_prune()`` asked after each report; a pruned trial is told
PRUNED, a finished one is told its final value. Deterministic: same data, same orders,
same numbers.

Metrics per pruner (mean over orders; "best" = lowest final val_loss):

* epochs: fraction of the epochs that no pruning trains;
* regret: (best final value among COMPLETE trials - best final value of all configs)
  / |best of all configs|; NopPruner's is 0 by construction;
* regret / (median - best): the same gap relative to the gap between the median config
  and the best one (0 = best found, 100 % = no better than a typical config), which
  stays meaningful when many configs tie near the noise floor;
* best kept: fraction of orders in which the single best configuration completed;
* top-10% false prunes: fraction of the true top-10 % configurations that were pruned;
* (worst order regret, for the spread).

PFL and MedianPruner get the SAME startup/warm-up (``n_startup_trials=10``,
``n_warmup_epochs``/``n_warmup_steps=10``) in the main block; the template's own settings
(5 startup trials, warm-up 10, top_k 5) are a second block. Rows marked ``exp:`` are
experimental PFL decision rules defined in this file (candidates for lightning_hpo/pruner.py).

WilcoxonPruner needs scipy; without it, a small exact/normal-approximation signed-rank
test defined here stands in (marked ``*``).

Run: ``python benchmarks/bench_pruners.py`` (~20-30 s on 2 cores), ``--quick`` for a
smoke run (1 order, fewer pruners).
"""

from __future__ import annotations

import argparse
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

from _common import cpu_count, print_table  # noqa: E402
from record_curves import DATA_DIR, TASKS, load_curves  # noqa: E402

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from lightning_hpo.pruner import (  # noqa: E402
    PFLDecision,
    PFLPruner,
    _decisive_curves,
    _is_worse,
    epochs_per_seed_of,
    mean_pfl,
    predict_final_loss,
    split_curves,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore")

STARTUP, WARMUP = 10, 10
WINNER = "exp: same-epoch, best-so-far, q=0.5"
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
        r_plus = sum(r for r, x in zip(ranks, d) if x > 0) + 0.5 * sum(r for r, x in zip(ranks, d) if x == 0)
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
        p = sf if alternative == "greater" else cdf if alternative == "less" else min(1.0, 2 * min(sf, cdf))
        return self._Result(p)


try:
    import scipy.stats  # noqa: F401

    WILCOXON_SHIM = False
except ImportError:
    import optuna.pruners._wilcoxon as _w

    _w.ss = _SignedRank()
    WILCOXON_SHIM = True


# --------------------------------------------------------------------------- experimental PFL rules


def _smoothed_last(values, target_epoch):
    """The EMA-smoothed value at the curve's last epoch (the predictor's own smoothing, no extrapolation)."""
    return predict_final_loss(values, len([v for v in values if math.isfinite(v)]))


def _best_so_far(values, target_epoch, maximize=False):
    finite = [v for v in values if math.isfinite(v)]
    return (max(finite) if maximize else min(finite)) if finite else math.nan


PREDICTORS = {"pfl": predict_final_loss, "smoothed": _smoothed_last, "last": lambda values, target: values[-1], "best": _best_so_far}


class PFLSameEpoch(PFLPruner):
    """exp: the running trial's prediction against the completed trials' predictions made
    from their curves CUT AT THE SAME EPOCH (apples to apples: both sides carry the same
    extrapolation bias, e.g. the late drop of a cosine schedule no extrapolation foresees).

    Threshold = the ``top_k``-th best such prediction, or with ``quantile`` the
    ``max(top_k, ceil(quantile * n_completed))``-th best.
    """

    def __init__(self, *args, predictor: str = "pfl", quantile: float | None = None, protect: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._predictor = predictor
        self._quantile = quantile
        self._protect = protect  # also require the original PFL rule to say "worse"
        self._cut_cache: dict = {}

    def evaluate(self, study, trial):
        maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
        if self._predictor == "best":
            self._predict = lambda values, target: _best_so_far(values, target, maximize)
        else:
            self._predict = PREDICTORS[self._predictor]
        base = super().evaluate(study, trial)
        if self._protect and base.reason == "ok":
            return base
        if base.reason not in ("ok", "worse", "no-reference"):
            return base
        per_seed = epochs_per_seed_of(trial)
        curves = split_curves(trial.intermediate_values, per_seed)
        decisive = _decisive_curves(curves, per_seed, self._n_warmup_epochs)
        n = len(decisive[-1])
        target = base.target_epoch
        mine = statistics.fmean(self._predict(c, target) for c in decisive)
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        preds = []
        for t in completed:
            if t.number == trial.number or not t.intermediate_values:
                continue
            key = (study.study_name, t.number, n)
            hit = self._cut_cache.get(key)
            if hit is None:
                cs = [c[:n] for c in split_curves(t.intermediate_values, epochs_per_seed_of(t))]
                hit = statistics.fmean(self._predict(c, target) for c in cs)
                self._cut_cache[key] = hit
            if math.isfinite(hit):
                preds.append(hit)
        k = self._top_k if self._quantile is None else max(self._top_k, math.ceil(self._quantile * len(preds)))
        if len(preds) < k:
            return PFLDecision(False, "no-reference", base.step, mine, None, target)
        direction = study.directions[0]
        preds.sort(reverse=direction == optuna.study.StudyDirection.MAXIMIZE)
        threshold = preds[k - 1]
        worse = _is_worse(mine, threshold, direction)
        return PFLDecision(worse, "worse" if worse else "ok", base.step, mine, threshold, target)


class PFLMargin(PFLPruner):
    """exp: prune only when the prediction is worse than the threshold by a margin that
    shrinks as the curve gets longer: ``margin = m * |threshold - best| * (1 - n/target)``...
    implemented as a relative margin on the spread of the reference predictions."""

    def __init__(self, *args, margin: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self._margin = margin

    def evaluate(self, study, trial):
        base = super().evaluate(study, trial)
        if base.reason not in ("ok", "worse"):
            return base
        per_seed = epochs_per_seed_of(trial)
        n = len(split_curves(trial.intermediate_values, per_seed)[-1])
        remaining = max(0.0, 1.0 - n / base.target_epoch)
        slack = self._margin * remaining * abs(base.threshold)
        direction = study.directions[0]
        limit = base.threshold + slack if direction == optuna.study.StudyDirection.MINIMIZE else base.threshold - slack
        worse = _is_worse(base.pfl, limit, direction)
        return PFLDecision(worse, "worse" if worse else "ok", base.step, base.pfl, limit, base.target_epoch)


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


def pruners(quick: bool) -> dict[str, callable]:
    S, W = STARTUP, WARMUP
    extra = {}
    if EXTRA_MODULE:
        extra = {
            "-- --pfl-module --": None,
            f"PFLPruner from --pfl-module (startup={S}, warmup={W}, top_k=10)": lambda: _extra_pfl()(n_startup_trials=S, n_warmup_epochs=W, top_k=10),
            f"PFLPruner from --pfl-module (startup={S}, warmup={W}, top_k=5)": lambda: _extra_pfl()(n_startup_trials=S, n_warmup_epochs=W, top_k=5),
            "PFLPruner from --pfl-module (startup=5, warmup=10, top_k=5) [template]": lambda: _extra_pfl()(n_startup_trials=5, n_warmup_epochs=10, top_k=5),
        }
    table = {
        "NopPruner": lambda: optuna.pruners.NopPruner(),
        f"PFL(startup={S}, warmup={W}, top_k=10)": lambda: PFLPruner(n_startup_trials=S, n_warmup_epochs=W, top_k=10),
        f"Median(startup={S}, warmup={W})": lambda: optuna.pruners.MedianPruner(n_startup_trials=S, n_warmup_steps=W),
        f"Percentile(25, startup={S}, warmup={W})": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=S, n_warmup_steps=W),
        "SuccessiveHalving()": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "Hyperband(max_resource=50)": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=50),
        f"Wilcoxon(p=0.1, startup_steps={W}){'*' if WILCOXON_SHIM else ''}": lambda: optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=W),
        f"Patient(Median(startup={S}, warmup={W}), patience=3)": lambda: optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(n_startup_trials=S, n_warmup_steps=W), patience=3
        ),
        "-- template settings --": None,
        "PFL(startup=5, warmup=10, top_k=5) [template]": lambda: PFLPruner(n_startup_trials=5, n_warmup_epochs=10, top_k=5),
        "Median(startup=5, warmup=10)": lambda: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=10),
        "-- experiments (PFL decision rules) --": None,
        "exp: PFL top_k=20": lambda: PFLPruner(n_startup_trials=S, n_warmup_epochs=W, top_k=20),
        "exp: PFL margin 0.5": lambda: PFLMargin(n_startup_trials=S, n_warmup_epochs=W, top_k=10, margin=0.5),
        "exp: same-epoch, pfl, top_k=10": lambda: PFLSameEpoch(n_startup_trials=S, n_warmup_epochs=W, top_k=10),
        "exp: same-epoch, smoothed, top_k=10": lambda: PFLSameEpoch(n_startup_trials=S, n_warmup_epochs=W, top_k=10, predictor="smoothed"),
        "exp: same-epoch, last, q=0.5": lambda: PFLSameEpoch(n_startup_trials=S, n_warmup_epochs=W, top_k=5, predictor="last", quantile=0.5),
        "exp: same-epoch, best-so-far, top_k=10": lambda: PFLSameEpoch(n_startup_trials=S, n_warmup_epochs=W, top_k=10, predictor="best"),
        WINNER: lambda: PFLSameEpoch(n_startup_trials=S, n_warmup_epochs=W, top_k=5, predictor="best", quantile=0.5),
        WINNER + " AND PFL": lambda: PFLSameEpoch(n_startup_trials=S, n_warmup_epochs=W, top_k=5, predictor="best", quantile=0.5, protect=True),
    }
    table.update(extra)
    if quick:
        keep = ("NopPruner", f"PFL(startup={S}", f"Median(startup={S}", "-- experiments", WINNER, "-- --pfl", "PFLPruner from")
        table = {k: v for k, v in table.items() if k.startswith(keep)}
    return table


@dataclass
class Replay:
    epochs_run: list[int]  # per config index
    completed: list[bool]
    seconds: float


def replay(curves: list[list[float]], order: list[int], make_pruner, epochs: int) -> Replay:
    # A fixed study name: HyperbandPruner assigns brackets from a hash of it.
    study = optuna.create_study(study_name="replay", direction="minimize", pruner=make_pruner(), sampler=optuna.samplers.RandomSampler(seed=0))
    epochs_run = [0] * len(curves)
    completed = [False] * len(curves)
    start = time.perf_counter()
    for idx in order:
        values = curves[idx]
        t = study.ask()
        t.set_user_attr("epochs_per_seed", epochs)
        t.set_user_attr("n_seeds", 1)
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
    ranked = sorted((i for i in range(len(finals)) if math.isfinite(finals[i])), key=lambda i: finals[i])
    top = ranked[: max(1, len(ranked) // 10)]
    total = epochs * len(curves)
    median_final = statistics.median(finals[i] for i in ranked)
    out = {"epochs": [], "regret": [], "nregret": [], "kept": [], "fp": [], "sec": []}
    for r in results:
        found = min(finals[i] for i in range(len(finals)) if r.completed[i])
        out["epochs"].append(sum(r.epochs_run) / total)
        out["regret"].append((found - best_all) / abs(best_all))
        out["nregret"].append((found - best_all) / (median_final - best_all))
        out["kept"].append(1.0 if r.completed[best_idx] else 0.0)
        out["fp"].append(sum(not r.completed[i] for i in top) / len(top))
        out["sec"].append(r.seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--orders", type=int, default=5, help="random trial orders (default: %(default)s)")
    ap.add_argument("--processes", type=int, default=cpu_count())
    ap.add_argument("--pruners", default=None, help="comma list of name prefixes to run (default: all)")
    ap.add_argument("--pfl-module", help="path of a patched lightning_hpo/pruner.py whose PFLPruner to replay as extra rows")
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
    names = [n for n, f in table.items() if f is not None and (not args.pruners or n.startswith(tuple(args.pruners.split(","))))]
    jobs = [(task, name, seed, args.quick) for task in tasks for name in names for seed in range(args.orders)]
    start = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(args.processes) as pool:
        done = pool.map(_job, jobs, chunksize=1)
    by = {}
    for task, name, seed, r in done:
        by.setdefault((task, name), []).append(r)
    print(f"replayed {len(jobs)} (task, pruner, order) studies in {time.perf_counter() - start:.0f} s on {args.processes} processes")

    verdicts = []
    for task in tasks:
        data = load_curves(task)
        curves = [[v if v is not None else math.nan for v in c["values"]] for c in data["configs"]]
        E = data["epochs"]
        rows = []
        summary = {}
        for name in table:
            if table[name] is None:
                rows.append((name, "", "", "", "", "", "", "", ""))
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
                    f"{100 * mean(s['nregret']):.2f}%",
                    f"{mean(s['kept']):.2f}",
                    f"{100 * mean(s['fp']):.1f}%",
                    f"{mean(s['regret']) / max(1e-9, 1 - mean(s['epochs'])):.3f}" if mean(s["epochs"]) < 1 else "-",
                    f"{mean(s['sec']):.1f}",
                )
            )
        finals = sorted(c[-1] for c in curves if math.isfinite(c[-1]))
        print_table(
            ["pruner", "epochs vs none", "regret (mean)", "regret (worst order)", "regret / (median - best)", "best kept", "top-10% pruned", "regret per epoch saved", "replay s"],
            rows,
            title=f"{task}: {len(curves)} configs x {E} epochs, {args.orders} trial orders; best final val_loss {finals[0]:.5g}, "
            f"top-10% cut {finals[max(0, len(finals) // 10 - 1)]:.5g}, median {finals[len(finals) // 2]:.5g}",
        )
        med = next((summary[n] for n in summary if n.startswith("Median(startup=10")), None)
        for label, pfl in (("PFL", next((summary[n] for n in summary if n.startswith("PFL(startup=10")), None)), (WINNER, summary.get(WINNER))):
            if not (pfl and med):
                continue
            fe, fr = statistics.fmean(pfl["epochs"]), statistics.fmean(pfl["regret"])
            me, mr = statistics.fmean(med["epochs"]), statistics.fmean(med["regret"])
            ok_epochs, ok_regret = fe <= 0.5, fr <= 0.02
            # "At least as good": no more epochs and no more regret than Median, within
            # TOL_EPOCHS / TOL_REGRET (differences below those are replay noise).
            dominates = fe <= me + TOL_EPOCHS and fr <= mr + TOL_REGRET
            verdicts.append(
                f"{task}: {label}: epochs {100 * fe:.1f}% (target <= 50%: {'met' if ok_epochs else 'missed'}), regret {100 * fr:.2f}% "
                f"(target <= 2%: {'met' if ok_regret else 'missed'}); Median under the same settings: epochs {100 * me:.1f}%, "
                f"regret {100 * mr:.2f}% -> trade-off {'at least as good' if dominates else 'worse'}"
            )
    print(f"\nverdicts (trade-off 'at least as good' = epochs <= Median's + {100 * TOL_EPOCHS:.0f} pt and regret <= Median's + {100 * TOL_REGRET:.1f} %):")
    for v in verdicts:
        print(v)
    if WILCOXON_SHIM:
        print("* scipy is not installed: WilcoxonPruner ran on this file's signed-rank test (exact for n <= 50 without ties).")


if __name__ == "__main__":
    main()
