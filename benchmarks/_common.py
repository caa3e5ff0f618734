"""Shared helpers for the benchmarks: the plain PyTorch reference loop and robust timing.

Every figure a benchmark prints is a ratio of measurements taken side by side in one
run (interleaved repeats, medians): the machine is shared, so absolute times move
between runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def iqr(xs: Iterable[float]) -> tuple[float, float]:
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return math.nan, math.nan
    if len(xs) < 4:
        return xs[0], xs[-1]
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def fmt_s(x: float, digits: int = 4) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None
) -> None:
    """A plain fixed-width table (also valid Markdown)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        print(line(r))


def interleaved(tasks: Sequence[object], repeats: int, seed: int = 0) -> list[tuple[int, object]]:
    """(repeat, task) pairs: every repeat runs every task once, in a fresh shuffled order."""
    rng = random.Random(seed)
    order = []
    for rep in range(repeats):
        batch = list(tasks)
        rng.shuffle(batch)
        order += [(rep, t) for t in batch]
    return order


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def timed2(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result). CPU time is less disturbed
    by other processes on a shared machine than wall time."""
    cpu, start = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - start, time.process_time() - cpu, out


def quiet() -> None:
    """Silence Lightning banners and the usual harmless warnings."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    with contextlib.suppress(Exception):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)


# --------------------------------------------------------------------------- plain loop


def plain_fit(
    train,
    val,
    *,
    epochs: int,
    seed: int,
    nodes: int = 64,
    layers: int = 4,
    activation: str = "GELU",
    lr: float = 5.0e-3,
    eta_min: float = 1.0e-5,
    batch_size: int = 256,
    criterion=None,
    out_features: int | None = None,
    schedule: str = "cosine",
    on_epoch_start=None,
) -> list[float]:
    """The reference training path: in-memory batches, AdamW, cosine schedule, per-epoch validation.

    ``schedule`` picks the learning-rate schedule: ``"cosine"`` (CosineAnnealingLR over the
    run to ``eta_min``, stepped per epoch; the project's default), ``"constant"`` (none),
    ``"step"`` (StepLR: times 0.3 every third of the run) or ``"onecycle"`` (OneCycleLR to
    ``lr`` over every optimizer step of the run: a warm-up, then annealing).
    ``on_epoch_start``, if given, is called at the start of every epoch (a timer's stamp).

    Uses the same RNG calls as the project's path (``seed_everything(seed)`` then the
    MLP's initialisation, and a ``Generator(seed)`` for the per-epoch permutation), so
    with the same seed it reproduces the project's validation curve.

    Returns the validation loss after every epoch.
    """
    import torch
    from torch import nn

    from lightning_hpo.builtin.mlp import MLP

    xt, yt = train.tensors[0], train.tensors[1]
    xv, yv = val.tensors[0], val.tensors[1]
    if out_features is None:
        out_features = (
            yt.shape[-1]
            if yt.ndim > 1
            else (int(yt.max()) + 1 if not yt.is_floating_point() else 1)
        )
    crit = criterion if criterion is not None else nn.MSELoss()
    torch.manual_seed(seed)
    random.seed(seed)
    net = MLP(xt.shape[-1], out_features, nodes, layers, activation)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    n_train, n_val = len(xt), len(xv)
    per_step = schedule == "onecycle"
    sched = make_schedule(opt, schedule, epochs, -(-n_train // batch_size), lr, eta_min)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        if on_epoch_start is not None:
            on_epoch_start()
        net.train()
        perm = torch.randperm(n_train, generator=gen)
        x, y = xt[perm], yt[perm]
        for s in range(0, n_train, batch_size):
            loss = crit(net(x[s : s + batch_size]), y[s : s + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if per_step:
                sched.step()
        if sched is not None and not per_step:
            sched.step()
        net.eval()
        total = torch.zeros(())
        with torch.no_grad():
            for s in range(0, n_val, batch_size):
                xb = xv[s : s + batch_size]
                total += crit(net(xb), yv[s : s + batch_size]) * len(xb)
        history.append(float(total / n_val))
    return history


SCHEDULES = ("cosine", "constant", "step", "onecycle")


def make_schedule(opt, schedule: str, epochs: int, steps_per_epoch: int, lr: float, eta_min: float):
    """The learning-rate scheduler ``plain_fit`` steps (None for a constant rate)."""
    import torch

    sched = torch.optim.lr_scheduler
    if schedule == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=epochs, eta_min=eta_min)
    if schedule == "constant":
        return None
    if schedule == "step":
        return sched.StepLR(opt, step_size=max(epochs // 3, 1), gamma=0.3)
    if schedule == "onecycle":
        return sched.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def cpu_count() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
