"""Record full validation curves for replaying pruners (benchmarks/bench_pruners.py).

For each task, ``--configs`` configurations are sampled with Optuna's RandomSampler
(seed ``--sampler-seed``) from the default search space (configs/optimize_template.yaml:
nodes {32, 64, 128}, layers 3..5, lr 1e-4..1e-2 log) and trained to the end (50 epochs,
1 seed) with the plain in-memory PyTorch loop of ``_common.plain_fit``. That loop uses the
same RNG calls as the project's Lightning path, so for the default task a curve equals
what ``fit_seed`` records for that config and seed (checked in bench_epoch.py).

Tasks:

* ``synthetic``: the project's default task (lightning_hpo.data.synthetic_regression,
  8k/2k points, MSE) with the run template's settings (AdamW, cosine to 1e-5, batch 256).
* ``spirals``: 3-class two-dimensional spirals (6k points, 20 % validation, angular
  noise), cross-entropy; spiky curves at high learning rates (77 of 200 rise by >20 %
  somewhere after epoch 10, 19 end >10 % above their minimum).

Output: benchmarks/data/curves_<task>.json.gz with the params and the per-epoch
validation losses rounded to 6 significant digits (null for non-finite values).

Run: ``python benchmarks/record_curves.py`` (~7.5 minutes on 2 busy cores),
``--quick`` for a smoke run into a temporary folder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, cpu_count  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent / "data"
TASKS = ("synthetic", "spirals")


def spirals(
    n: int = 6000, classes: int = 3, noise: float = 0.3, val_fraction: float = 0.2, seed: int = 42
):
    """Points on ``classes`` interleaved spiral arms with angular noise, as (train, val) TensorDatasets."""
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    t = torch.rand(n, generator=g)
    theta = (
        y.float() * (2 * math.pi / classes)
        + 3.0 * math.pi * t
        + noise * torch.randn(n, generator=g)
    )
    r = 0.1 + t
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=g)
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def task_data(task: str):
    from torch import nn

    if task == "synthetic":
        from lightning_hpo.data import synthetic_regression

        train, val = synthetic_regression()
        return train, val, nn.MSELoss(), 1
    if task == "spirals":
        train, val = spirals()
        return train, val, nn.CrossEntropyLoss(), 3
    raise ValueError(task)


_CACHE: dict = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _train_one(job: tuple[str, int, dict, int, int]) -> tuple[int, list, float]:
    task, index, params, epochs, seed = job
    if task not in _CACHE:
        _CACHE[task] = task_data(task)
    train, val, criterion, out = _CACHE[task]
    from _common import plain_fit

    start = time.perf_counter()
    values = plain_fit(
        train,
        val,
        epochs=epochs,
        seed=seed,
        nodes=params["net_config_nodes"],
        layers=params["net_config_layers"],
        lr=params["optimizer_config_lr"],
        criterion=criterion,
        out_features=out,
    )
    rounded = [float(f"{v:.6g}") if math.isfinite(v) else None for v in values]
    return index, rounded, time.perf_counter() - start


def sample_configs(n: int, seed: int) -> list[dict]:
    """``n`` parameter sets from the default optimize config's search space, RandomSampler(seed)."""
    import optuna

    from lightning_hpo.optimize_config import load_optimize_config
    from lightning_hpo.run_config import load_run_config

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    run = load_run_config(ROOT / "configs" / "run_template.yaml")
    opt = load_optimize_config(ROOT / "configs" / "optimize_template.yaml", run)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask(opt.distributions())
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


def record(
    task: str,
    configs: list[dict],
    epochs: int,
    seed: int,
    processes: int,
    out_dir: Path,
    sampler_seed: int,
) -> Path:
    jobs = [(task, i, p, epochs, seed) for i, p in enumerate(configs)]
    curves: list = [None] * len(jobs)
    seconds = [0.0] * len(jobs)
    start = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes, initializer=_init_worker) as pool:
        for done, (i, values, s) in enumerate(pool.imap_unordered(_train_one, jobs), 1):
            curves[i], seconds[i] = values, s
            if done % 25 == 0 or done == len(jobs):
                print(
                    f"  {task}: {done}/{len(jobs)} configs, {time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    payload = {
        "task": task,
        "description": __doc__.split("Tasks:")[1].split("Output:")[0].strip(),
        "metric": "val_loss",
        "direction": "minimize",
        "epochs": epochs,
        "seed": seed,
        "sampler": f"optuna.samplers.RandomSampler(seed={sampler_seed}) over configs/optimize_template.yaml search_space",
        "fixed": {
            "optimizer": "AdamW",
            "scheduler": "CosineAnnealingLR(T_max=epochs, eta_min=1e-5)",
            "batch_size": 256,
            "activation": "GELU",
        },
        "record_seconds": round(time.perf_counter() - start, 1),
        "configs": [
            {"params": p, "values": c, "train_seconds": round(s, 3)}
            for p, c, s in zip(configs, curves, seconds)
        ],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"curves_{task}.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        json.dump(payload, fh, separators=(",", ":"))
    return path


def load_curves(task: str, data_dir: Path = DATA_DIR) -> dict:
    with gzip.open(data_dir / f"curves_{task}.json.gz", "rt", encoding="utf-8") as fh:
        return json.load(fh)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument(
        "--seed",
        type=int,
        default=89,
        help="training seed (default: the run template's first seed, %(default)s)",
    )
    ap.add_argument("--sampler-seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--processes", type=int, default=cpu_count())
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 6 configs x 5 epochs into a temporary folder",
    )
    args = ap.parse_args()
    if args.quick:
        args.configs, args.epochs, args.out = 6, 5, Path(tempfile.mkdtemp(prefix="curves_"))
    configs = sample_configs(args.configs, args.sampler_seed)
    for task in args.tasks.split(","):
        start = time.perf_counter()
        path = record(
            task, configs, args.epochs, args.seed, args.processes, args.out, args.sampler_seed
        )
        data = load_curves(task, args.out)
        finals = [c["values"][-1] for c in data["configs"] if c["values"][-1] is not None]
        print(
            f"{task}: {len(data['configs'])} configs x {args.epochs} epochs in {time.perf_counter() - start:.0f} s "
            f"({args.processes} processes) -> {path} ({path.stat().st_size / 1024:.0f} KiB); "
            f"final val_loss min {min(finals):.4g}, median {sorted(finals)[len(finals) // 2]:.4g}, max {max(finals):.4g}"
        )


if __name__ == "__main__":
    main()
