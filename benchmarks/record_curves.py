"""Record full validation curves for replaying pruners (benchmarks/bench_pruners.py).

For each task, configurations are sampled with Optuna's RandomSampler (seed
``--sampler-seed``) from the task's search space and trained to the end with the plain
in-memory PyTorch loop of ``_common.plain_fit`` (AdamW, cosine to 1e-5 over the run).
That loop uses the same RNG calls as the project's Lightning path, so for the default
task a curve equals what ``fit_seed`` records for that config and seed (checked in
bench_epoch.py).

* ``synthetic`` and ``spirals`` (the first recording): 200 configurations of the default
  search space (configs/optimize_template.yaml: nodes {32, 64, 128}, layers 3..5,
  lr 1e-4..1e-2 log; batch 256), 50 epochs, one seed (89).
* ``wine`` and ``friedman`` (the noisy tasks): 120 configurations of a noisier space
  (nodes {32, 64, 128}, layers 2..4, lr 3e-4..3e-2 log, batch {8, 16, 32, 64}), 30
  epochs, the run template's three seeds (89, 231, 928). The replayed curve (``values``)
  is the seeds' mean per epoch, which is what a trial whose seeds train fused reports;
  each seed's curve is kept too (``seed_values``).
* the tasks that vary the schedule (``moons``, ``sines``, ``iris``, ``blobs``,
  ``friedman3``): 120 configurations of the noisy space, 30 epochs, one seed or three,
  under a constant rate, StepLR or OneCycleLR (``SETUPS``). Each recording keeps its
  schedule and the ``lr_schedule`` user attr the tuner would write for it, which
  bench_pruners.py sets on the replayed trials.

Tasks:

* ``synthetic``: the project's default task (lightning_hpo.builtin.synthetic_regression,
  8k/2k points, MSE) with the run template's settings (AdamW, cosine to 1e-5, batch 256).
* ``spirals``: 3-class two-dimensional spirals (6k points, 20 % validation, angular
  noise), cross-entropy; spiky curves at high learning rates (77 of 200 rise by >20 %
  somewhere after epoch 10, 19 end >10 % above their minimum).
* ``wine``: scikit-learn's bundled wine data (178 samples, 13 features standardised on
  the training part, 3 classes, 30 % validation), cross-entropy. With 53 validation
  samples and batches down to 8 the curves are noisy and spiky, and many overfit late.
* ``friedman``: Friedman's regression #1 (10 uniform features, 5 of them irrelevant,
  2,000 points, 20 % validation) with heavy-tailed noise (Student's t, 3 degrees of
  freedom, about as much variance as the signal), target standardised, MSE.
* ``moons``: two moons (scikit-learn's generator, noise 0.3; 300 training points, 100
  validation), cross-entropy, a constant learning rate, one seed: noisy, and large nets
  overfit.
* ``sines``: a sum of sines of 4 of 6 uniform features plus normal noise (300 training
  points, 120 validation), MSE, a constant learning rate, the mean of 3 seeds; overfits.
* ``iris``: scikit-learn's bundled iris data (150 samples, 45 validation), cross-entropy,
  StepLR (x0.3 every 10 epochs), the mean of 3 seeds; tiny, so its curves are noisy and
  overconfident nets overfit.
* ``blobs``: scikit-learn's make_classification (1,500 points, 20 features, 4 classes, 5 %
  flipped labels; 300 validation), cross-entropy, OneCycleLR stepped per batch (a
  warm-up, then annealing), one seed.
* ``friedman3``: scikit-learn's make_friedman3 with noise (300 training points, 150
  validation), target standardised, MSE, a constant learning rate, one seed.

Data that scikit-learn keeps for independent evaluation (digits, diabetes,
breast_cancer) is never recorded here.

Output: benchmarks/data/curves_<task>.json.gz with the params and the per-epoch
validation losses rounded to 6 significant digits (null for non-finite values).

Run: ``python benchmarks/record_curves.py --tasks moons,sines,iris,blobs,friedman3``
(the schedule tasks), ``python benchmarks/record_curves.py --tasks wine,friedman`` (the noisy tasks: 3 and
21 minutes on 2 busy cores; scikit-learn is needed for ``wine`` only:
``pip install -e .[bench]``),
``--tasks synthetic,spirals`` for the first two (~7.5 minutes on 2 busy cores),
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, cpu_count  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent / "data"
TASKS = (
    "synthetic",
    "spirals",
    "wine",
    "friedman",
    "moons",
    "sines",
    "iris",
    "blobs",
    "friedman3",
)
SEEDS = (89, 231, 928)  # the run template's seeds


@dataclass(frozen=True)
class TaskSetup:
    """How a task is recorded: its search space, run length, seeds and learning-rate schedule."""

    space: str  # "default" (the optimize template's) or "noisy" (small batches, high lr)
    configs: int
    epochs: int
    seeds: tuple[int, ...]
    schedule: str = "cosine"  # _common.SCHEDULES


SETUPS = {
    "synthetic": TaskSetup("default", 200, 50, SEEDS[:1]),
    "spirals": TaskSetup("default", 200, 50, SEEDS[:1]),
    "wine": TaskSetup("noisy", 120, 30, SEEDS),
    "friedman": TaskSetup("noisy", 120, 30, SEEDS),
    "moons": TaskSetup("noisy", 120, 30, SEEDS[:1], "constant"),
    "sines": TaskSetup("noisy", 120, 30, SEEDS, "constant"),
    "iris": TaskSetup("noisy", 120, 30, SEEDS, "step"),
    "blobs": TaskSetup("noisy", 120, 30, SEEDS[:1], "onecycle"),
    "friedman3": TaskSetup("noisy", 120, 30, SEEDS[:1], "constant"),
}

# What the tuner records for each schedule (user attr lr_schedule, tuning.objective.lr_schedule):
# the scheduler's import path (None: a constant rate), its period in epochs, how it steps.
SCHEDULERS = {
    "cosine": ("torch.optim.lr_scheduler.CosineAnnealingLR", "epoch"),
    "constant": (None, "epoch"),
    "step": ("torch.optim.lr_scheduler.StepLR", "epoch"),
    "onecycle": ("torch.optim.lr_scheduler.OneCycleLR", "step"),
}


def lr_schedule_attr(schedule: str, epochs: int) -> dict:
    """The ``lr_schedule`` user attr a trial of this schedule gets from the tuner."""
    name, interval = SCHEDULERS[schedule]
    return {"name": name, "T_max": epochs, "interval": interval}


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


def wine(val_fraction: float = 0.3, seed: int = 42):
    """scikit-learn's bundled wine data (no download), standardised on its training part."""
    import torch
    from sklearn.datasets import load_wine
    from torch.utils.data import TensorDataset

    features, labels = load_wine(return_X_y=True)
    x, y = torch.tensor(features, dtype=torch.float32), torch.tensor(labels)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(x) * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def friedman(n: int = 2000, noise: float = 0.6, val_fraction: float = 0.2, seed: int = 42):
    """Friedman's regression #1 plus Student-t(3) noise of ``noise`` times the signal's
    scale (about 4.8), features and target standardised on the training part."""
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 10, generator=g)
    signal = (
        10 * torch.sin(math.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
    )
    # Student's t with 3 degrees of freedom: a normal over sqrt(chi-square(3) / 3).
    chi2 = (torch.randn(n, 3, generator=g) ** 2).sum(1)
    y = signal + noise * 4.8 * torch.randn(n, generator=g) / (chi2 / 3).sqrt()
    perm = torch.randperm(n, generator=g)
    n_val = int(round(n * val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    y = ((y - y[train].mean()) / y[train].std()).unsqueeze(1)
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def _split(x, y, n_val: int, seed: int, standardise_y: bool = False):
    """(train, val) TensorDatasets: a seeded split, features (and a regression target)
    standardised on the training part."""
    import torch
    from torch.utils.data import TensorDataset

    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    x = (x - x[train].mean(0)) / x[train].std(0)
    if standardise_y:
        y = ((y - y[train].mean()) / y[train].std()).unsqueeze(1)
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def moons(n: int = 400, n_val: int = 100, seed: int = 42):
    """scikit-learn's two moons (generated, no download), noise 0.3, 300 training points."""
    import torch
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=0.3, random_state=seed)
    return _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), n_val, seed)


def sines(n: int = 420, n_val: int = 120, seed: int = 42):
    """A sum of sines of 4 uniform features plus 2 irrelevant ones and normal noise of
    half the signal's deviation; 300 training points, so large nets overfit."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=g) * 2 - 1
    signal = (
        torch.sin(3 * x[:, 0]) + torch.sin(5 * x[:, 1] * x[:, 2]) + 0.5 * torch.cos(4 * x[:, 3])
    )
    y = signal + 0.5 * signal.std() * torch.randn(n, generator=g)
    return _split(x, y, n_val, seed, standardise_y=True)


def iris(n_val: int = 45, seed: int = 42):
    """scikit-learn's bundled iris data (150 samples, 4 features, 3 classes, no download)."""
    import torch
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), n_val, seed)


def blobs(n: int = 1500, n_val: int = 300, seed: int = 42):
    """scikit-learn's make_classification (generated): 20 features, 6 informative, 4
    classes, 5 % of labels flipped."""
    import torch
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=20,
        n_informative=6,
        n_redundant=4,
        n_classes=4,
        flip_y=0.05,
        random_state=seed,
    )
    return _split(torch.tensor(x, dtype=torch.float32), torch.tensor(y), n_val, seed)


def friedman3(n: int = 450, n_val: int = 150, seed: int = 42):
    """scikit-learn's make_friedman3 (generated, arctan of a ratio of 4 features), noise
    0.3, target standardised; 300 training points."""
    import torch
    from sklearn.datasets import make_friedman3

    x, y = make_friedman3(n_samples=n, noise=0.3, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    return _split(x, y, n_val, seed, standardise_y=True)


def task_data(task: str):
    from torch import nn

    if task == "synthetic":
        from lightning_hpo.builtin.data import synthetic_regression

        train, val = synthetic_regression()
        return train, val, nn.MSELoss(), 1
    if task == "spirals":
        train, val = spirals()
        return train, val, nn.CrossEntropyLoss(), 3
    if task == "wine":
        train, val = wine()
        return train, val, nn.CrossEntropyLoss(), 3
    if task == "friedman":
        train, val = friedman()
        return train, val, nn.MSELoss(), 1
    classification = {"moons": (moons, 2), "iris": (iris, 3), "blobs": (blobs, 4)}
    if task in classification:
        make, classes = classification[task]
        train, val = make()
        return train, val, nn.CrossEntropyLoss(), classes
    regression = {"sines": sines, "friedman3": friedman3}
    if task in regression:
        train, val = regression[task]()
        return train, val, nn.MSELoss(), 1
    raise ValueError(task)


_CACHE: dict = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _rounded(values: list[float]) -> list[float | None]:
    return [float(f"{v:.6g}") if math.isfinite(v) else None for v in values]


def _train_one(job: tuple[str, int, dict, int, tuple[int, ...]]) -> tuple[int, list, float]:
    """One configuration, every seed: (index, per-seed curves, seconds)."""
    task, index, params, epochs, seeds = job
    schedule = SETUPS[task].schedule
    if task not in _CACHE:
        _CACHE[task] = task_data(task)
    train, val, criterion, out = _CACHE[task]
    from _common import plain_fit

    start = time.perf_counter()
    curves = [
        plain_fit(
            train,
            val,
            epochs=epochs,
            seed=seed,
            nodes=params["net_config_nodes"],
            layers=params["net_config_layers"],
            lr=params["optimizer_config_lr"],
            batch_size=params.get("batch_size", 256),
            criterion=criterion,
            out_features=out,
            schedule=schedule,
        )
        for seed in seeds
    ]
    return index, curves, time.perf_counter() - start


def seed_mean(curves: list[list[float]]) -> list[float]:
    """Per-epoch mean over seeds (non-finite where any seed is), as a fused trial reports."""
    return [math.fsum(epoch) / len(epoch) for epoch in zip(*curves)]


SCHEDULE_TEXT = {
    "cosine": "CosineAnnealingLR(T_max=epochs, eta_min=1e-5), per epoch",
    "constant": "none (constant learning rate)",
    "step": "StepLR(step_size=epochs // 3, gamma=0.3), per epoch",
    "onecycle": "OneCycleLR(max_lr=lr, total_steps=every step of the run), per step",
}
NOISY_SPACE_TEXT = "nodes {32, 64, 128}, layers 2..4, lr 3e-4..3e-2 log, batch_size {8, 16, 32, 64}"


def search_space(space: str) -> dict:
    """Optuna distributions of a recording's search space (see the module docstring)."""
    import optuna

    if space == "default":
        from lightning_hpo.config.optimize import load_optimize_config
        from lightning_hpo.config.run import load_run_config

        run = load_run_config(ROOT / "configs" / "run_template.yaml")
        return load_optimize_config(
            ROOT / "configs" / "optimize_template.yaml", run
        ).distributions()
    d = optuna.distributions
    return {
        "net_config_nodes": d.CategoricalDistribution([32, 64, 128]),
        "net_config_layers": d.IntDistribution(2, 4),
        "optimizer_config_lr": d.FloatDistribution(3e-4, 3e-2, log=True),
        "batch_size": d.CategoricalDistribution([8, 16, 32, 64]),
    }


def sample_configs(n: int, seed: int, space: str = "default") -> list[dict]:
    """``n`` parameter sets from ``space`` (:func:`search_space`), RandomSampler(seed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    distributions = search_space(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask(distributions)
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


def record(
    task: str,
    configs: list[dict],
    epochs: int,
    seeds: tuple[int, ...],
    processes: int,
    out_dir: Path,
    sampler_seed: int,
    space: str,
) -> Path:
    jobs = [(task, i, p, epochs, seeds) for i, p in enumerate(configs)]
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
    several = len(seeds) > 1
    space_text = (
        "configs/optimize_template.yaml search_space" if space == "default" else NOISY_SPACE_TEXT
    )
    description = __doc__.split("Tasks:")[1].split("Output:")[0].strip()
    payload = {
        "task": task,
        "description": next(
            p for p in description.split("\n* ") if p.lstrip("* ").startswith(f"``{task}``")
        ),
        "metric": "val_loss",
        "direction": "minimize",
        "epochs": epochs,
        "seed": seeds[0],
        "seeds": list(seeds),
        "values": "the seeds' mean per epoch" if several else "the seed's curve",
        "sampler": f"optuna.samplers.RandomSampler(seed={sampler_seed}) over {space_text}",
        "schedule": SETUPS[task].schedule,
        "lr_schedule": lr_schedule_attr(SETUPS[task].schedule, epochs),
        "fixed": {
            "optimizer": "AdamW",
            "scheduler": SCHEDULE_TEXT[SETUPS[task].schedule],
            "activation": "GELU",
            **({"batch_size": 256} if space == "default" else {}),
        },
        "record_seconds": round(time.perf_counter() - start, 1),
        "configs": [
            {
                "params": p,
                "values": _rounded(seed_mean(c)),
                **({"seed_values": [_rounded(v) for v in c]} if several else {}),
                "train_seconds": round(s, 3),
            }
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
    ap.add_argument("--configs", type=int, help="configurations per task (default: the task's)")
    ap.add_argument("--epochs", type=int, help="epochs per run (default: the task's)")
    ap.add_argument(
        "--seeds", type=int, help="the first N of the run template's seeds (default: the task's)"
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
    for task in args.tasks.split(","):
        setup = SETUPS[task]
        n_configs, epochs = args.configs or setup.configs, args.epochs or setup.epochs
        seeds = SEEDS[: args.seeds] if args.seeds else setup.seeds
        configs = sample_configs(n_configs, args.sampler_seed, setup.space)
        start = time.perf_counter()
        path = record(
            task, configs, epochs, seeds, args.processes, args.out, args.sampler_seed, setup.space
        )
        data = load_curves(task, args.out)
        finals = [c["values"][-1] for c in data["configs"] if c["values"][-1] is not None]
        print(
            f"{task}: {len(data['configs'])} configs x {epochs} epochs x {len(seeds)} seed(s) in "
            f"{time.perf_counter() - start:.0f} s ({args.processes} processes) -> {path} "
            f"({path.stat().st_size / 1024:.0f} KiB); final val_loss min {min(finals):.4g}, "
            f"median {sorted(finals)[len(finals) // 2]:.4g}, max {max(finals):.4g}"
        )


if __name__ == "__main__":
    main()
