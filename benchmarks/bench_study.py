"""End to end: the default tune.py study with the PFL pruner vs the same study unpruned,
or (``--versus sequential``) fused seeds vs the same study training seed after seed.

Runs ``python tune.py`` on configs/run_template.yaml and configs/optimize_template.yaml
as shipped (20 trials x 3 seeds x 50 epochs, TPE, PFL) and on a copy of the optimize
config whose pruner is ``optuna.pruners.NopPruner``, each with its own temporary SQLite
storage and run folder, one after the other (the order alternates between repeats).
Reports wall time, seed-epochs trained (a fused trial's reported epoch counts once per
seed), trials pruned and the best value of each, and their ratios.

The full default study takes roughly 5-10 minutes unpruned on 2 cores; ``--trials``
shrinks both studies alike. ``--threads`` passes torch's thread count to tune.py
(default 1: on a shared 2-core machine two intra-op threads make epoch times erratic;
``--threads 0`` leaves torch's default).

``--versus median`` adds a third study, the template with ``optuna.pruners.MedianPruner``
(start-up 10 trials, warm-up 10 epochs, as PFL), so PFL, NopPruner and Median compare in
one run.

Run: ``python benchmarks/bench_study.py [--trials N] [--repeats R] [--versus nop|median|sequential]``,
``--quick`` for a smoke run (3 trials x 1 seed x 12 epochs).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, median, print_table  # noqa: E402

from lightning_hpo.attrs import EPOCHS_ATTR, N_SEEDS_ATTR  # noqa: E402


def pruner_config(tmp: Path, block: str, name: str) -> Path:
    """A copy of the optimize template whose whole pruner block (name + kwargs) is ``block``."""
    text = (ROOT / "configs" / "optimize_template.yaml").read_text()
    text, n = re.subn(r"(?ms)^pruner:.*?(?=^\S)", f"pruner:\n{block}\n", text)
    assert n == 1, "pruner block not found in optimize_template.yaml"
    path = tmp / f"optimize_{name}.yaml"
    path.write_text(text)
    return path


def nop_config(tmp: Path) -> Path:
    return pruner_config(tmp, "  name: optuna.pruners.NopPruner\n", "nop")


def median_config(tmp: Path) -> Path:
    """MedianPruner with the template's start-up and warm-up."""
    block = (
        "  name: optuna.pruners.MedianPruner\n  kwargs:\n"
        "    n_startup_trials: 10\n    n_warmup_steps: 10\n"
    )
    return pruner_config(tmp, block, "median")


def seed_epochs(trial) -> int:
    """Epochs trained, counting each seed: a fused trial trains all its seeds in each reported
    epoch; an earlier version's trial (``epochs_per_seed`` layout) reported every seed's epochs."""
    if "epochs_per_seed" in trial.user_attrs:
        return len(trial.intermediate_values)
    return len(trial.intermediate_values) * trial.user_attrs.get(N_SEEDS_ATTR, 1)


def run_study(
    label: str,
    optimize_config: Path,
    tmp: Path,
    args,
    fuse_seeds: str | None = None,
    root: Path = ROOT,
) -> dict:
    """One study by ``root``'s tune.py on ``root``'s run config (``fuse_seeds`` set when given)."""
    work = Path(tempfile.mkdtemp(prefix=f"{label}_", dir=tmp))
    db = work / "study.db"
    cmd = [
        sys.executable,
        str(root / "tune.py"),
        "--optimize-config",
        str(optimize_config),
        "--storage",
        f"sqlite:///{db}",
        "--output",
        str(work / "runs"),
    ]
    run_config = root / "configs" / "run_template.yaml"
    if args.seeds or args.epochs or fuse_seeds:
        text = run_config.read_text()
        if fuse_seeds:
            text, n = re.subn(r"(?m)^fuse_seeds:\s*\w+", f"fuse_seeds: {fuse_seeds}", text)
            assert n == 1, "fuse_seeds not found in run_template.yaml"
        if args.seeds:
            text = re.sub(
                r"(?m)^seeds:.*?(#|$)",
                f"seeds: [{', '.join(str(s) for s in [89, 231, 928][: args.seeds])}]  \\1",
                text,
            )
        run_config = work / "run.yaml"
        run_config.write_text(text)
    cmd += ["--run-config", str(run_config)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.trials:
        cmd += ["--trials", str(args.trials)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{label} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    summaries = optuna.get_all_study_summaries(f"sqlite:///{db}")
    study = optuna.load_study(study_name=summaries[0].study_name, storage=f"sqlite:///{db}")
    trials = study.get_trials(deepcopy=False)
    epochs = sum(seed_epochs(t) for t in trials)
    n_seeds = trials[0].user_attrs.get(N_SEEDS_ATTR, 1)
    per_seed = trials[0].user_attrs.get(EPOCHS_ATTR) or trials[0].user_attrs.get(
        "epochs_per_seed", 0
    )
    out = {
        "wall": wall,
        "epochs": epochs,
        "full": per_seed * n_seeds * len(trials),
        "seeds": trials[0].user_attrs.get(N_SEEDS_ATTR),
        "trials": len(trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "best": study.best_value,
        "best_trial": study.best_trial.number,
        "best_params": study.best_trial.params,
        "log": proc.stdout,
    }
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--trials", type=int, help="override the study's trials (default: the config's 20)"
    )
    ap.add_argument("--epochs", type=int, help="override the run config's epochs (default: 50)")
    ap.add_argument(
        "--seeds", type=int, help="use the first N of the run template's seeds (default: all 3)"
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for tune.py; 0 = torch's default (default: %(default)s)",
    )
    ap.add_argument("--show-log", action="store_true", help="print tune.py's per-trial lines")
    ap.add_argument(
        "--versus",
        choices=("nop", "median", "sequential"),
        default="nop",
        help="nop: the shipped study vs NopPruner; median: vs NopPruner and MedianPruner (startup "
        "10, warm-up 10), one after the other; sequential: vs fuse_seeds: false (default: %(default)s)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="instead: vs the same study run by the tune.py and configs of another checkout (e.g. `git worktree add /tmp/old <commit>`)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 trials x 1 seed x 12 epochs")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.epochs, args.seeds = 3, 12, 1
    tmp = Path(tempfile.mkdtemp(prefix="bench_study_"))
    shipped = ROOT / "configs" / "optimize_template.yaml"
    # label -> (optimize config, the run config's fuse_seeds, the checkout whose tune.py runs)
    if args.baseline:
        other = f"baseline {args.baseline}"
        configs = {
            "PFL (as shipped)": (shipped, None, ROOT),
            other: (args.baseline / "configs" / "optimize_template.yaml", None, args.baseline),
        }
    elif args.versus == "nop":
        other = "NopPruner"
        configs = {"PFL (as shipped)": (shipped, None, ROOT), other: (nop_config(tmp), None, ROOT)}
    elif args.versus == "median":
        other = "NopPruner"
        configs = {
            "PFL (as shipped)": (shipped, None, ROOT),
            other: (nop_config(tmp), None, ROOT),
            "MedianPruner": (median_config(tmp), None, ROOT),
        }
    else:
        other = "seed after seed"
        configs = {"PFL (as shipped)": (shipped, None, ROOT), other: (shipped, "false", ROOT)}
    results: dict[str, list[dict]] = {k: [] for k in configs}
    for rep in range(args.repeats):
        order = list(configs) if rep % 2 == 0 else list(configs)[::-1]
        for label in order:
            optimize_config, fuse_seeds, root = configs[label]
            r = run_study(
                label.split()[0], optimize_config, tmp, args, fuse_seeds=fuse_seeds, root=root
            )
            results[label].append(r)
            print(
                f"  repeat {rep + 1}: {label}: {r['wall']:.1f} s, {r['epochs']} epochs, {r['pruned']} pruned, best {r['best']:.5g}",
                flush=True,
            )
            if args.show_log:
                print(r["log"])
    rows = []
    agg = {}
    for label, rs in results.items():
        agg[label] = {
            k: median(r[k] for r in rs) for k in ("wall", "epochs", "best", "pruned", "full")
        }
        a = agg[label]
        rows.append(
            (
                label,
                f"{a['wall']:.1f}",
                int(a["epochs"]),
                f"{100 * a['epochs'] / a['full']:.1f}%",
                int(a["pruned"]),
                f"{a['best']:.5g}",
                rs[-1]["best_trial"],
            )
        )
    p, n = agg["PFL (as shipped)"], agg[other]
    for label in agg:
        if label == "PFL (as shipped)":
            continue
        a = agg[label]
        rows.append(
            (
                f"ratio shipped / {label}",
                f"{p['wall'] / a['wall']:.2f}",
                f"{p['epochs'] / a['epochs']:.2f}",
                "",
                "",
                f"{p['best'] / a['best']:.3f}",
                "",
            )
        )
    nop = results[other][0]
    shape = f"{nop['trials']} trials, {int(n['full']) // max(1, nop['trials'])} seed-epochs per trial ({nop['seeds']} seed(s) each)"
    print_table(
        [
            "study",
            "wall s",
            "seed-epochs trained",
            "of full",
            "pruned trials",
            "best val_loss",
            "best trial",
        ],
        rows,
        title=f"bench_study: tune.py, default configs, {shape}, threads={args.threads or 'torch default'}, medians of {args.repeats} repeat(s)",
    )
    print(f"best value shipped vs {other}: {100 * (p['best'] - n['best']) / abs(n['best']):+.2f}%")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
