"""Fused seeds vs seed after seed: the real train.py path, S seeds of the default task.

For S in --seeds (default 1, 3, 5, 10) it trains the template's run config
(TensorBoard and best + last checkpoints on, as by default) with ``fuse_seeds: true``
and ``fuse_seeds: false``, and the plain in-memory PyTorch loop of
``benchmarks/_common.py`` (one seed) as the per-seed reference, all interleaved in
one run, each at two lengths (--short and --long epochs). It reports:

* wall time of a whole --long run, fused / sequential (targets: 3 seeds <= 0.5, 5 seeds <= 0.4);
* the marginal cost of one seed-epoch, ``(long run - short run) / (long - short) / S``,
  against the plain loop's per epoch (target: 5 fused seeds <= 0.6x);
* each seed's final val_loss fused vs alone (they should agree within 0.5 %).

Run: ``python benchmarks/bench_seeds.py [--repeats 3] [--threads 2]``; ``--quick`` for a
smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, fmt_s, interleaved, median, plain_fit, print_table, quiet, timed  # noqa: E402

SEEDS = [89, 231, 928, 11, 22, 33, 44, 55, 66, 77]  # the template's three first


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--seeds", default="1,3,5,10", help="comma list of seed counts (default: %(default)s)"
    )
    ap.add_argument("--short", type=int, default=5)
    ap.add_argument("--long", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads (default: %(default)s, this project's CPU machines)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1 repeat, 2 vs 4 epochs, 1 and 3 seeds"
    )
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.short, args.long, args.seeds = 1, 2, 4, "1,3"
    counts = [int(s) for s in args.seeds.split(",")]

    import torch

    from lightning_hpo.builtin.data import synthetic_regression
    from lightning_hpo.config.run import load_run_config
    from lightning_hpo.console import quiet_lightning
    from lightning_hpo.training.runs import train

    torch.set_num_threads(args.threads)
    quiet_lightning()
    quiet()
    base = load_run_config(ROOT / "configs" / "run_template.yaml", {"device": "auto"})
    train_set, val_set = synthetic_regression()
    root = Path(tempfile.mkdtemp(prefix="bench_seeds_"))
    n = [0]

    def run(path: str, s: int, epochs: int):
        if path == "plain":
            return timed(lambda: plain_fit(train_set, val_set, epochs=epochs, seed=SEEDS[0]))
        n[0] += 1
        cfg = dataclasses.replace(
            base, seeds=SEEDS[:s], epochs=epochs, fuse_seeds=path == "fused", project=f"p{n[0]}"
        )
        wall, result = timed(lambda: train(cfg, root))
        shutil.rmtree(root / cfg.project, ignore_errors=True)
        return wall, [r.final for r in result.results]

    for path in ("plain", "fused", "sequential"):  # warm-up: imports, kernels, the first Trainer
        run(path, 3 if path != "plain" else 1, 2)
    tasks = [("plain", 1, e) for e in (args.short, args.long)]
    tasks += [
        (p, s, e)
        for s in counts
        for p in (("sequential",) if s == 1 else ("fused", "sequential"))
        for e in (args.short, args.long)
    ]
    walls: dict[tuple[str, int, int], list[float]] = {}
    finals: dict[tuple[str, int], list[float]] = {}
    for _, (path, s, e) in interleaved(tasks, args.repeats, seed=1):
        wall, out = run(path, s, e)
        walls.setdefault((path, s, e), []).append(wall)
        if e == args.long and path != "plain":
            finals[(path, s)] = out
        print(f"  {path:10s} S={s:2d} {e:3d} epochs: {wall:7.2f} s", flush=True)
    shutil.rmtree(root, ignore_errors=True)

    span = args.long - args.short

    def per_epoch(path: str, s: int) -> float:
        return (median(walls[(path, s, args.long)]) - median(walls[(path, s, args.short)])) / span

    plain = per_epoch("plain", 1)
    rows = []
    for s in counts:
        seq_wall, seq_epoch = (
            median(walls[("sequential", s, args.long)]),
            per_epoch("sequential", s),
        )
        if s == 1:
            rows.append((s, "-", fmt_s(seq_wall, 2), "-", "-", f"{seq_epoch / plain:.2f}", "-"))
            continue
        fused_wall, fused_epoch = median(walls[("fused", s, args.long)]), per_epoch("fused", s)
        diff = max(
            abs(a - b) / abs(b) for a, b in zip(finals[("fused", s)], finals[("sequential", s)])
        )
        rows.append(
            (
                s,
                fmt_s(fused_wall, 2),
                fmt_s(seq_wall, 2),
                f"{fused_wall / seq_wall:.2f}",
                f"{fused_epoch / s / plain:.2f}",
                f"{seq_epoch / s / plain:.2f}",
                f"{100 * diff:.3f}%",
            )
        )
    print_table(
        [
            "seeds",
            f"fused s ({args.long} ep)",
            f"sequential s ({args.long} ep)",
            "fused / sequential",
            "fused seed-epoch / plain epoch",
            "sequential seed-epoch / plain epoch",
            "max final val_loss diff",
        ],
        rows,
        title=f"bench_seeds: train() on the default task, device {base.device}, {args.threads} thread(s), medians of {args.repeats} interleaved repeat(s); "
        f"plain loop {1000 * plain:.1f} ms/epoch",
    )
    targets = {3: 0.5, 5: 0.4}
    for s, target in targets.items():
        if s in counts:
            ratio = median(walls[("fused", s, args.long)]) / median(
                walls[("sequential", s, args.long)]
            )
            print(
                f"target: {s} seeds fused <= {target}x sequential wall: {ratio:.2f}x -> {'met' if ratio <= target else 'missed'}"
            )
    if 5 in counts:
        ratio = per_epoch("fused", 5) / 5 / plain
        print(
            f"target: 5 fused seeds <= 0.6x the plain loop per seed-epoch: {ratio:.2f}x -> {'met' if ratio <= 0.6 else 'missed'}"
        )


if __name__ == "__main__":
    main()
