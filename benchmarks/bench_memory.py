"""Memory over many trials in one process: RSS after every 10th of 100 back-to-back tiny trials.

Each trial builds a new Trainer, TensorBoard logger and checkpoints (Lightning #18640
reports RSS growing with every new Trainer), so a leak shows as steady growth. The
first ten trials are warm-up (imports, allocator pools); the figure is the growth from
trial 10 to the last, target < 50 MB.

Run: ``python benchmarks/bench_memory.py`` (about 1-2 minutes on 2 cores), ``--trials N``
for another count. RSS comes from psutil when installed, else /proc/self/status.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, quiet  # noqa: E402

TARGET_MB = 50.0
WARMUP = 10


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
        raise RuntimeError("no psutil and no /proc/self/status: cannot read RSS") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100, help="trials to run (default: %(default)s)")
    p.add_argument(
        "--every", type=int, default=10, help="record RSS every N trials (default: %(default)s)"
    )
    args = p.parse_args(argv)

    from lightning_hpo.config.optimize import optimize_config_from_dict
    from lightning_hpo.config.run import run_config_from_dict
    from lightning_hpo.console import quiet_lightning
    from lightning_hpo.tuning.study import TuneOptions
    from lightning_hpo.tuning.tuner import tune

    quiet_lightning()  # after Lightning's import, which sets its own log levels
    quiet()

    run = run_config_from_dict(
        {
            "project": "Mem",
            "device": "cpu",
            "seeds": [1],
            "epochs": 2,
            "batch_size": 64,
            "data_config": {"n": 300},
            "net_config": {"nodes": 8, "layers": 1},
        }
    )
    space = {
        "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}}
    }
    opt = optimize_config_from_dict(
        {
            "study_name": "mem",
            "trials": args.trials,
            "seed": 1,
            "pruner": None,
            "search_space": space,
        },
        run,
        "<bench_memory>",
    )

    warmup = min(WARMUP, args.trials // 2)  # a short run measures growth over its second half
    rows: list[tuple[int, float, float]] = []  # (trials done, RSS MB, seconds)
    start = time.perf_counter()

    def record(line: str) -> None:  # tune()'s per-trial line: one call per finished trial
        done = len(record.lines) + 1
        record.lines.append(line)
        if done in (1, warmup, args.trials) or done % args.every == 0:
            rows.append((done, rss_mb(), time.perf_counter() - start))

    record.lines = []
    rows.append((0, rss_mb(), 0.0))
    with tempfile.TemporaryDirectory() as tmp:
        settings = TuneOptions(
            storage=f"sqlite:///{tmp}/mem.db", output=f"{tmp}/runs", heartbeat=None
        )
        tune(run, opt, settings, echo=record)

    base = next(rss for done, rss, _ in rows if done == warmup)
    print_table(
        ["trials done", "RSS MB", f"Δ since trial {warmup} MB", "elapsed s"],
        [
            (done, f"{rss:.1f}", f"{rss - base:+.1f}" if done >= warmup else "-", f"{secs:.1f}")
            for done, rss, secs in rows
        ],
        title=f"RSS over {args.trials} tiny trials in one process (tune(), temp SQLite)",
    )
    growth = rows[-1][1] - base
    verdict = "ok" if growth < TARGET_MB else "OVER TARGET"
    print(
        f"\ngrowth after trial {warmup}: {growth:+.1f} MB over {rows[-1][0] - warmup} trials (target < {TARGET_MB:.0f} MB): {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
