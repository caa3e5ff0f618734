"""Per-trial overhead of a study: what a trial costs beyond its epochs.

Runs ``lightning_hpo.tuning.tuner.tune`` on the default configs (configs/run_template.yaml and
configs/optimize_template.yaml) with one seed, NopPruner, a temporary SQLite storage and
run folder, for ``--trials`` trials of E epochs and, interleaved, of 2E epochs. The plain
PyTorch loop runs E and 2E epochs in the same repeats as a yardstick.

* s/epoch inside a study = (T(2E) - T(E)) / (trials * E): includes the pruning callback's
  per-epoch ``trial.report`` / ``should_prune`` on SQLite.
* overhead/trial = T(E) / trials - E * (s/epoch inside a study): Trainer and logger
  construction, config.yaml, sampler, storage writes, final checkpoint/hparams, teardown,
  the per-trial garbage collection.

A breakdown of one trial comes from timers wrapped around the objective and fit_seed
(bench-only instrumentation).

Target: overhead <= 0.3 s per trial.

Run: ``python benchmarks/bench_trial_overhead.py`` (~2-3 minutes), ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, fmt_s, interleaved, median, plain_fit, print_table, quiet, timed2  # noqa: E402

quiet()

import optuna  # noqa: E402
import torch  # noqa: E402

from lightning_hpo import console  # noqa: E402
from lightning_hpo.builtin.data import synthetic_regression  # noqa: E402
from lightning_hpo.config.optimize import load_optimize_config  # noqa: E402
from lightning_hpo.config.run import load_run_config  # noqa: E402
from lightning_hpo.training import runs as training  # noqa: E402
from lightning_hpo.tuning import tuner as tuning  # noqa: E402
from lightning_hpo.tuning.study import TuneOptions  # noqa: E402
from lightning_hpo.tuning.tuner import tune  # noqa: E402


class GcShim:
    """Stands in for ``tuning.collect_and_freeze``, the per-trial gc callback: times it and
    applies the variant's policy."""

    def __init__(self):
        self.mode, self.times = "collect+freeze", []

    def __call__(self, study, trial):
        start = time.perf_counter()
        if self.mode != "off":
            gc.collect()
            if self.mode == "collect+freeze":
                gc.freeze()
        self.times.append(time.perf_counter() - start)


GC = GcShim()
tuning.collect_and_freeze = GC
_create_or_load_study = tuning.create_or_load_study


def in_memory_study(run, opt, settings):
    return optuna.create_study(
        study_name=opt.study_name,
        sampler=opt.make_sampler(),
        pruner=opt.make_pruner(),
        direction=opt.direction,
    )


# name -> (gc mode, create_or_load_study)
VARIANTS = {
    "shipped": ("collect+freeze", _create_or_load_study),
    "gc_after_trial": ("collect", _create_or_load_study),
    "no gc": ("off", _create_or_load_study),
    "mem": ("collect+freeze", in_memory_study),
}
LEGEND = {
    "shipped": "as shipped: SQLite file, gc.collect() then gc.freeze() after every trial (only new objects are scanned next time)",
    "gc_after_trial": "before: a full gc.collect() after every trial (Optuna's gc_after_trial=True)",
    "no gc": "no per-trial collection (Python's automatic gc only)",
    "mem": "floor: Optuna InMemoryStorage (no heartbeat), shipped gc policy",
}


class Timers:
    """Wraps fit_seed to split a trial into objective / fit_seed setup / Trainer.fit."""

    def __init__(self):
        self.reset()
        self._fit_seed = training.fit_seed

    def reset(self):
        self.fit_seed_s: list[float] = []
        self.trainer_fit_s: list[float] = []
        self.trial_end: list[float] = []
        self.epoch_gaps: list[float] = []  # time between consecutive epoch starts, all trials

    def install(self):
        timers = self
        from lightning.pytorch.callbacks import Callback

        class EpochClock(Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                now = time.perf_counter()
                if getattr(self, "last", None) is not None:
                    timers.epoch_gaps.append(now - self.last)
                self.last = now

            def on_train_end(self, trainer, pl_module):
                timers.epoch_gaps.append(time.perf_counter() - self.last)

        def fit_seed(cfg, seed, run_dir, options=None, dm=None):
            options = options or training.FitOptions()
            options = dataclasses.replace(options, callbacks=[*options.callbacks, EpochClock()])
            start = time.perf_counter()
            result = timers._fit_seed(cfg, seed, run_dir, options, dm)
            timers.fit_seed_s.append(time.perf_counter() - start)
            timers.trainer_fit_s.append(result.seconds)
            return result

        training.fit_seed = fit_seed


def run_study(
    root: Path, variant: str, epochs: int, trials: int, timers: Timers
) -> tuple[float, float, dict]:
    """(wall s, CPU s, breakdown) of one tune() call of ``trials`` trials of ``epochs`` epochs."""
    gc_mode, create_or_load = VARIANTS[variant]
    work = Path(tempfile.mkdtemp(prefix="study_", dir=root))
    run = load_run_config(
        ROOT / "configs" / "run_template.yaml", {"epochs": epochs, "device": "cpu"}
    )
    run.seeds = run.seeds[:1]
    opt = load_optimize_config(ROOT / "configs" / "optimize_template.yaml", run, trials=trials)
    opt.pruner = {"name": "optuna.pruners.NopPruner", "kwargs": {}}
    settings = TuneOptions(storage=f"sqlite:///{work}/study.db", output=str(work / "runs"))
    timers.reset()
    GC.mode, GC.times = gc_mode, []
    tuning.create_or_load_study = create_or_load
    start = time.perf_counter()
    try:
        # Progress echoes one line per finished trial: its calls mark the trial ends.
        wall, cpu, study = timed2(
            lambda: tune(
                run, opt, settings, echo=lambda line: timers.trial_end.append(time.perf_counter())
            )
        )
    finally:
        tuning.create_or_load_study = _create_or_load_study
        gc.unfreeze()  # the next run starts from the same heap state whatever this one did
    assert len(study.trials) == trials, (len(study.trials), trials)
    ends = [start] + timers.trial_end
    per_trial = [b - a for a, b in zip(ends, ends[1:])]
    breakdown = {
        "gaps": per_trial[1:] or per_trial,  # the first trial also carries the study's creation
        "trial": median(per_trial[1:] or per_trial),
        "fit_seed": median(timers.fit_seed_s),
        "Trainer.fit": median(timers.trainer_fit_s),
        "gc": median(GC.times),
        "epoch": median(timers.epoch_gaps),
    }
    shutil.rmtree(work, ignore_errors=True)
    return wall, cpu, breakdown


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--epochs", type=int, default=4, help="E (default: %(default)s); the long studies run 2E"
    )
    ap.add_argument("--trials", type=int, default=6, help="trials per study (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default: %(default)s; 2 threads are erratic on a shared 2-core machine)",
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma list (default: %(default)s): "
        + "; ".join(f"{k}: {v}" for k, v in LEGEND.items()),
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 2 repeats of 3-trial studies, E=2"
    )
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.trials, args.repeats = 2, 3, 2
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    torch.set_num_threads(args.threads)
    console.quiet_lightning()
    quiet()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    root = Path(tempfile.mkdtemp(prefix="bench_trial_"))
    timers = Timers()
    timers.install()
    train, val = synthetic_regression()
    E, E2, n = args.epochs, 2 * args.epochs, args.trials

    run_study(root, variants[0], 1, 2, timers)  # imports, first Trainer, sqlite code paths
    tasks = [(v, e) for v in ["plain", *variants] for e in (E, E2)]
    wall: dict = {}
    cpu: dict = {}
    parts: dict = {}
    for _, (v, e) in interleaved(tasks, args.repeats, seed=2):
        if v == "plain":
            # n plain runs, so both kinds train the same number of epochs
            w, c, _ = timed2(
                lambda e=e: [plain_fit(train, val, epochs=e, seed=s) for s in range(n)]
            )
        else:
            w, c, b = run_study(root, v, e, n, timers)
            parts.setdefault((v, e), []).append(b)
        wall.setdefault((v, e), []).append(w)
        cpu.setdefault((v, e), []).append(c)

    plain_w = (median(wall[("plain", E2)]) - median(wall[("plain", E)])) / (n * E)
    plain_c = (median(cpu[("plain", E2)]) - median(cpu[("plain", E)])) / (n * E)
    rows = []
    overheads, direct = {}, {}
    for v in variants:
        # E vs 2E from the per-trial wall times (gaps between trial ends), pooled over repeats
        tE = median(g for b in parts[(v, E)] for g in b["gaps"])
        t2E = median(g for b in parts[(v, E2)] for g in b["gaps"])
        ew = (t2E - tE) / E
        overheads[v] = tE - E * ew
        b = {k: median(p[k] for p in parts[(v, E)]) for k in parts[(v, E)][0] if k != "gaps"}
        epoch = median(p["epoch"] for p in parts[(v, E)] + parts[(v, E2)])
        direct[v] = b["trial"] - E * epoch
        rows.append(
            (
                v,
                fmt_s(ew),
                f"{ew / plain_w:.2f}",
                fmt_s(tE, 3),
                fmt_s(t2E, 3),
                fmt_s(overheads[v], 3),
                fmt_s(epoch),
                fmt_s(direct[v], 3),
                fmt_s(b["trial"] - b["fit_seed"], 3),
                fmt_s(b["gc"], 3),
                fmt_s(b["fit_seed"] - b["Trainer.fit"], 3),
                fmt_s(b["Trainer.fit"] - E * epoch, 3),
            )
        )
    print_table(
        [
            "variant",
            "s/epoch (E vs 2E)",
            "x plain epoch",
            f"s/trial E={E}",
            f"s/trial 2E={E2}",
            "overhead s/trial (E vs 2E)",
            "clocked s/epoch",
            "overhead s/trial (direct)",
            "outside fit_seed",
            "  of which gc",
            "fit_seed setup",
            "Trainer.fit - E epochs",
        ],
        rows,
        title=f"bench_trial_overhead: tune() on the default configs, 1 seed, NopPruner, SQLite file; {n} trials per study, "
        f"E={E} vs 2E={E2}, {args.repeats} interleaved repeats, {args.threads} torch thread(s); "
        f"plain loop {plain_w:.4f} s/epoch wall, {plain_c:.4f} CPU in the same repeats",
    )
    for v in variants:
        print(f"  {v}: {LEGEND[v]}")
    print(
        "\nAll wall time. s/trial = median gap between consecutive trial ends (pooled over repeats); "
        "s/epoch (E vs 2E) = (s/trial 2E - s/trial E) / E; overhead (E vs 2E) = s/trial E - E x that. "
        "The breakdown columns are medians of timers "
        "inside the E-epoch studies: 'outside fit_seed' = sampler, suggest/user-attr/report writes, "
        "callbacks, the per-trial gc; 'fit_seed setup' = config.yaml, data, module, Trainer and logger; "
        "'Trainer.fit - E epochs' = sanity check, hparams, last checkpoint, teardown."
    )
    print(
        "'clocked s/epoch' = median gap between consecutive epoch starts inside the trials (a callback); "
        "'trial - E x clocked epoch' is the per-trial overhead measured directly, which a busy machine "
        "disturbs less than the E-vs-2E difference."
    )
    print("\ntarget: overhead <= 0.3 s/trial (E-vs-2E estimate / direct estimate)")
    for v in variants:
        a, b = overheads[v], direct[v]
        print(
            f"  {v}: {a:.3f} / {b:.3f} s ({'met' if max(a, b) <= 0.3 else 'met by one estimate' if min(a, b) <= 0.3 else 'missed'})"
        )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
