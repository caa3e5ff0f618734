"""Throughput of local workers: trials per minute of ``tune.py --workers N`` for N = 1 and 2.

Each N runs the default study (configs/run_template.yaml and optimize_template.yaml, on
the CPU) with pruning off, so every trial does the same work, and a fresh SQLite study
of ``--trials`` trials. Two rates per run:

* wall: trials / the command's wall time, process start-up included (what a user waits);
* trials: trials / the time from the first trial's start to the last trial's end
  (the steady rate, without start-up).

The figure is the ratio of the 2-worker rate to the 1-worker rate; target >= 1.7x. On a
shared machine run it when ``uptime`` shows no other load: both workers need a free core.

Run: ``python benchmarks/bench_workers.py`` (8 trials per N: about 4-6 minutes on 2
cores), ``--trials``, ``--epochs`` and ``--workers 1,2,4`` to change the work.
``--one-thread-baseline`` adds 1 worker with 1 torch thread: on a busy machine torch's
default intra-op threads slow a lone worker down, which inflates the plain ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, cpu_count, print_table, quiet  # noqa: E402

TARGET_RATIO = 1.7


def run_study(
    workers: int, trials: int, epochs: int | None, folder: Path, threads: int | None = None
) -> tuple[float, float, int]:
    """(wall seconds, first-start-to-last-end seconds, finished trials) of one ``tune.py`` run."""
    import optuna

    from lightning_hpo.config.yamlio import dump_yaml, load_yaml

    opt = load_yaml(ROOT / "configs" / "optimize_template.yaml")
    opt["pruner"] = None  # equal work per trial
    opt_path = folder / "optimize.yaml"
    dump_yaml(opt, opt_path)
    url = f"sqlite:///{folder}/study.db"
    cmd = [
        sys.executable,
        str(ROOT / "tune.py"),
        "--run-config",
        str(ROOT / "configs" / "run_template.yaml"),
        "--optimize-config",
        str(opt_path),
    ]
    cmd += [
        "--storage",
        url,
        "--output",
        str(folder / "runs"),
        "--device",
        "cpu",
        "--trials",
        str(trials),
        "--workers",
        str(workers),
    ]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if threads:
        cmd += ["--threads", str(threads)]  # the hidden option --workers passes to each worker
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"tune.py --workers {workers} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    done = optuna.load_study(study_name=opt["study_name"], storage=url).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    return wall, span, len(done)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="trials per run (default: %(default)s)")
    p.add_argument(
        "--epochs", type=int, help="override the run template's epochs (default: the template's)"
    )
    p.add_argument(
        "--workers", default="1,2", help="comma-separated worker counts (default: %(default)s)"
    )
    p.add_argument(
        "--one-thread-baseline",
        action="store_true",
        help="also time 1 worker limited to 1 torch thread, as each of 2 workers on 2 cores is: separates the gain of "
        "parallel trials from the cost of torch's intra-op threads on a small model",
    )
    args = p.parse_args(argv)
    quiet()
    runs = [(f"{w}", int(w), None) for w in args.workers.split(",")]
    if args.one_thread_baseline:
        runs.insert(1, ("1 (1 thread)", 1, 1))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{cpu_count()} CPUs, load average {load:.2f} before the runs; {args.trials} trials per run, pruning off"
    )
    results = {}
    for label, workers, threads in runs:
        with tempfile.TemporaryDirectory() as tmp:
            wall, span, done = run_study(workers, args.trials, args.epochs, Path(tmp), threads)
        results[label] = (60 * done / wall, 60 * done / span, wall, span, done)
        print(
            f"  workers {label}: {done} trials in {wall:.1f} s wall ({span:.1f} s from first start to last end)",
            flush=True,
        )

    print_table(
        ["workers", "trials", "wall s", "trials/min (wall)", "trials/min (trials)"],
        [(w, r[4], f"{r[2]:.1f}", f"{r[0]:.2f}", f"{r[1]:.2f}") for w, r in results.items()],
        title="Throughput of tune.py --workers N",
    )
    baselines = [label for label, workers, _ in runs if workers == 1]
    for label, workers, _ in runs:
        if workers == 1:
            continue
        for base in baselines:
            wall_ratio = results[label][0] / results[base][0]
            trial_ratio = results[label][1] / results[base][1]
            verdict = (
                f"; target >= {TARGET_RATIO}x: {'ok' if trial_ratio >= TARGET_RATIO else 'BELOW TARGET'}"
                if base == "1"
                else ""
            )
            print(
                f"\n{label} workers vs {base} worker: {trial_ratio:.2f}x trials/min ({wall_ratio:.2f}x by wall time){verdict}"
            )
    if hasattr(os, "getloadavg"):
        print(f"load average after the runs: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
