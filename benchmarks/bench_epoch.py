"""Epoch speed: the project's training path against a plain PyTorch loop, side by side.

Seconds per epoch of a path = (wall time of a LONG-epoch run - wall time of a SHORT-epoch
run) / (LONG - SHORT), so the per-run setup (Trainer, logger, data, first checkpoint)
cancels. Every repeat runs every (path, length) once, in a shuffled order; the table
shows medians over repeats and the median of the per-repeat ratios to the plain loop.

Paths (all on the default task: MLP 64x4 GELU, synthetic 8k/2k, AdamW 5e-3, cosine
to 1e-5, batch 256, validation every epoch):

* ``plain``: plain PyTorch loop, in-memory batches, one ``float()`` per epoch.
* ``project``: ``lightning_hpo.training.runs.fit_seed`` on the default RunConfig (TensorBoard
  logger, best.ckpt + last.ckpt), i.e. what train.py and every tuning trial run.
* ``project sync-ckpt``: the same with the checkpoints written on the training thread
  (``TorchCheckpointIO``, a new best copied once last.ckpt is written), as before they
  moved to a background one.
* ``project lightning-io``: the checkpoints written by Lightning's own ``AsyncCheckpointIO``
  (the state snapshot with ``apply_to_collection``, pickled by the background thread, which
  then holds the GIL the training thread needs; fsspec's write), as before
  ``training.checkpoint_io``.
* ``project nn-setattr``: the built-in module without its ``__setattr__`` shortcut for the
  attribute Lightning sets around every hook (``_current_fx_name``).
* ``project lightning-profiler``: Lightning's own ``PassThroughProfiler``, whose
  ``profile()`` around every hook is a generator-based context manager, in place of
  ``training.trainer.NoProfiler``.
* ``project before``: the three above: the path as it was before them.
* ``project -ckpt``: the same with ``checkpoint_config: {save_best: false, save_last: false}``
  (a config switch that exists today).
* ``project -ckpt -tb``: additionally no TensorBoard logger (monkeypatched here; this
  is the Lightning floor for this module).
Designs tried and not shipped, monkeypatched here:

* ``B: manual-opt``: manual optimization with the raw optimizer step (module.py).
* ``C: epoch-step``: the epoch's mini-batches handed to Lightning as ONE batch, the
  module loops over them (data.py + module.py): Lightning's per-step machinery runs
  once per epoch. Same updates, same curve. Both B and C count steps through
  LightningOptimizer's private ``_on_before_step``/``_on_after_step`` hooks (without
  them ModelCheckpoint stops saving), and C hides the step structure from callbacks,
  progress bars and step-based schedulers; ``C -ckpt``: C with checkpoints off.

A second estimate, less moved by other load on the machine: the median whole epoch of the
long runs (from one epoch's start to the next, the first epoch left out), pooled over the
repeats ("median epoch s"); the target verdict needs both at or under 1.5x.

The last column counts the checkpoint state dumps during a long run (a new best.ckpt is a
copy of the last.ckpt just dumped) and the trainer's
global_step at the last write: a candidate that breaks step counting (and so
ModelCheckpoint's saving) shows up there.

By default every path runs with ``torch.set_num_threads(1)`` and plain/project also
with 2 threads (``--threads 1,2``); 2 threads on a shared 2-core machine are erratic.

Run: ``python benchmarks/bench_epoch.py`` (about 4 minutes on 2 busy cores, 5 with ``--profile``),
``--quick`` for a smoke run, ``--profile`` to add a pyinstrument/cProfile breakdown.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import fmt_s, interleaved, iqr, median, plain_fit, print_table, quiet, timed2  # noqa: E402

quiet()

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO  # noqa: E402
from lightning.pytorch.plugins.io import AsyncCheckpointIO  # noqa: E402
from lightning.pytorch.profilers import PassThroughProfiler  # noqa: E402

import lightning_hpo.builtin as builtin  # noqa: E402
from lightning_hpo import console  # noqa: E402
from lightning_hpo.builtin import data  # noqa: E402
from lightning_hpo.builtin.data import synthetic_regression  # noqa: E402
from lightning_hpo.builtin.supervised import SupervisedModule  # noqa: E402
from lightning_hpo.config.run import RunConfig  # noqa: E402
from lightning_hpo.training import components  # noqa: E402
from lightning_hpo.training import runs as training  # noqa: E402
from lightning_hpo.training.files import copy_atomically  # noqa: E402
from lightning_hpo.training.trainer import NoProfiler  # noqa: E402

NO_CKPT = {"save_best": False, "save_last": False}


# --------------------------------------------------------------------------- ablations


@contextlib.contextmanager
def no_tensorboard():
    saved = training.run_loggers
    training.run_loggers = lambda cfg, run_dir: False  # Trainer(logger=False)
    try:
        yield
    finally:
        training.run_loggers = saved


class ManualOptModule(SupervisedModule):
    """Candidate for module.py: manual optimization with the raw optimizer.

    Skips Lightning's per-step closure, LightningOptimizer and precision/strategy hooks
    (on_before_backward, on_after_backward, on_before_optimizer_step, on_before_zero_grad).
    Valid for one device at 32-bit precision; under DDP, use ``self.manual_backward``.

    The LightningOptimizer's step-progress hooks are still called around the raw step:
    without them ``trainer.global_step`` stays 0 and ModelCheckpoint skips every save
    after the first (it looked 25 % faster that way).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False

    def _raw_step(self, loss, lopt):
        lopt.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lopt._on_before_step()  # counts the step: trainer.global_step
        lopt.optimizer.step()
        lopt._on_after_step()

    def training_step(self, batch, batch_idx):
        self._raw_step(self._step(batch, "train"), self.optimizers())

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()


class EpochBatches(data.TensorBatches):
    """Candidate for data.py: the epoch's mini-batches handed to Lightning as ONE batch."""

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield list(super().__iter__())


class EpochStepModule(ManualOptModule):
    """Candidate for module.py: one Lightning step per epoch, the same mini-batch updates inside."""

    def training_step(self, batch, batch_idx):
        lopt = self.optimizers()
        for mini in batch:
            self._raw_step(self._step(mini, "train"), lopt)

    def validation_step(self, batch, batch_idx):
        for mini in batch:
            self._step(mini, "val")


@contextlib.contextmanager
def patched(**changes):
    """Temporarily replace names in lightning_hpo.training.components / .data / .module."""
    saved = []
    for name, value in changes.items():
        # The run config's module path resolves to lightning_hpo.builtin.SupervisedModule,
        # when each path's fresh RunConfig first resolves its components.
        owner = {"TensorBatches": data, "SupervisedModule": builtin}.get(name, components)
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def _manual():
    return patched(SupervisedModule=ManualOptModule)


def _epoch_step():
    return patched(
        SupervisedModule=EpochStepModule,
        TensorBatches=EpochBatches,
        feature_sizes=lambda dm: (1, 1),
    )


class EpochStepPublicModule(EpochStepModule):
    """C with Lightning's public manual-optimization API for every mini-batch step."""

    def training_step(self, batch, batch_idx):
        lopt = self.optimizers()
        for mini in batch:
            loss = self._step(mini, "train")
            lopt.zero_grad()
            self.manual_backward(loss)
            lopt.step()


def _epoch_step_public():
    return patched(
        SupervisedModule=EpochStepPublicModule,
        TensorBatches=EpochBatches,
        feature_sizes=lambda dm: (1, 1),
    )


class SyncCheckpointIO(TorchCheckpointIO):
    """Writes on the training thread; a new best is copied once last.ckpt is written."""

    def copy_when_written(self, source, target):
        copy_atomically(source, target)


class LightningAsyncIO(AsyncCheckpointIO):
    """The background writer as it was before training.checkpoint_io: Lightning's own
    AsyncCheckpointIO (generic apply_to_collection snapshot, TorchCheckpointIO's fsspec
    write), a new best copied behind the write."""

    def copy_when_written(self, source, target):
        self._ensure_setup()
        self._executor.submit(copy_atomically, source, target)


class NNModuleSetattr(SupervisedModule):
    """The module with nn.Module's own __setattr__ for Lightning's per-hook _current_fx_name."""

    __setattr__ = torch.nn.Module.__setattr__


@contextlib.contextmanager
def io_class(cls):
    saved = training.BackgroundCheckpointIO
    training.BackgroundCheckpointIO = cls
    try:
        yield
    finally:
        training.BackgroundCheckpointIO = saved


@contextlib.contextmanager
def lightning_profiler():
    """Lightning's own PassThroughProfiler in place of training.trainer.NoProfiler."""
    saved = NoProfiler.profile
    NoProfiler.profile = PassThroughProfiler.profile
    try:
        yield
    finally:
        NoProfiler.profile = saved


@contextlib.contextmanager
def before_this_turn():
    """All three: the path as it was before this turn's per-step and checkpoint work."""
    with (
        io_class(LightningAsyncIO),
        patched(SupervisedModule=NNModuleSetattr),
        lightning_profiler(),
    ):
        yield


@contextlib.contextmanager
def sync_checkpoints():
    """The checkpoints written on the training thread (before they moved to a background one)."""
    saved = training.BackgroundCheckpointIO
    training.BackgroundCheckpointIO = SyncCheckpointIO
    try:
        yield
    finally:
        training.BackgroundCheckpointIO = saved


VARIANTS = {
    "plain": None,
    "project": (dict(), contextlib.nullcontext),
    "project sync-ckpt": (dict(), sync_checkpoints),
    "project lightning-io": (dict(), lambda: io_class(LightningAsyncIO)),
    "project nn-setattr": (dict(), lambda: patched(SupervisedModule=NNModuleSetattr)),
    "project lightning-profiler": (dict(), lightning_profiler),
    "project before": (dict(), before_this_turn),
    "project -ckpt": (dict(checkpoint_config=NO_CKPT), contextlib.nullcontext),
    "project -ckpt -tb": (dict(checkpoint_config=NO_CKPT), no_tensorboard),
    "B: manual-opt": (dict(), _manual),
    "C: epoch-step": (dict(), _epoch_step),
    "C2: epoch-step public API": (dict(), _epoch_step_public),
    "C -ckpt": (dict(checkpoint_config=NO_CKPT), _epoch_step),
}


# --------------------------------------------------------------------------- runs

CKPT_WRITES = {"n": 0, "global_step": None}
_save_checkpoint = pl.Trainer.save_checkpoint


def _counting_save(self, filepath, *args, **kwargs):
    CKPT_WRITES["n"] += 1
    CKPT_WRITES["global_step"] = self.global_step
    return _save_checkpoint(self, filepath, *args, **kwargs)


pl.Trainer.save_checkpoint = _counting_save  # every state dump (RunCheckpoints, ModelCheckpoint)

# Epoch-start stamps of the run in progress: the time between two consecutive starts is one
# whole epoch (training, validation, logging, checkpoints), free of the run's setup.
EPOCH_STARTS: list[float] = []
_epoch_start = SupervisedModule.on_train_epoch_start


def _stamped_epoch_start(self):
    EPOCH_STARTS.append(time.perf_counter())
    return _epoch_start(self)


SupervisedModule.on_train_epoch_start = _stamped_epoch_start  # every variant's module


def epoch_times() -> list[float]:
    """The run's whole epochs after its first (which warms up), from ``EPOCH_STARTS``."""
    return [b - a for a, b in zip(EPOCH_STARTS[1:], EPOCH_STARTS[2:])]


class Runner:
    def __init__(self, root: Path, seed: int):
        self.root, self.seed, self.n = root, seed, 0
        self.writes: dict[tuple[str, int], tuple[int, int | None]] = {}
        self.train, self.val = synthetic_regression()

    def run(self, variant: str, epochs: int, threads: int) -> tuple[float, float, list[float]]:
        """(wall s, CPU s, validation curve) of one run; its epochs' times in EPOCH_STARTS."""
        torch.set_num_threads(threads)
        EPOCH_STARTS.clear()
        if variant == "plain":
            stamp = lambda: EPOCH_STARTS.append(time.perf_counter())  # noqa: E731
            return timed2(
                lambda: plain_fit(
                    self.train, self.val, epochs=epochs, seed=self.seed, on_epoch_start=stamp
                )
            )
        overrides, ctx = VARIANTS[variant]
        cfg = RunConfig(epochs=epochs, seeds=[self.seed], device="cpu", **overrides)
        self.n += 1
        run_dir = self.root / "MLP" / f"g{self.n}" / str(self.seed)
        CKPT_WRITES.update(n=0, global_step=None)
        with ctx():
            wall, cpu, result = timed2(lambda: training.fit_seed(cfg, self.seed, run_dir))
        self.writes[(variant, epochs)] = (CKPT_WRITES["n"], CKPT_WRITES["global_step"])
        shutil.rmtree(run_dir.parent, ignore_errors=True)
        return wall, cpu, result.history


def profile(runner: Runner, epochs: int, runs: int) -> None:
    """Where the project path's time goes, over ``runs`` fits of ``epochs`` epochs."""
    torch.set_num_threads(2)
    runner.run("project", 2, 2)  # warm
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(runs):
        runner.run("project", epochs, 2)
    prof.disable()
    stats = pstats.Stats(prof)
    total = max(v[3] for v in stats.stats.values())
    # (path fragment of the file, function name) -> label; line numbers differ between versions
    wanted = {
        ("loops/fit_loop.py", "advance"): "epoch loop (train + val + epoch-end hooks)",
        ("", "run_backward"): "autograd backward (torch)",  # builtin: matched by name
        ("torch/optim/adam.py", "step"): "AdamW.step, incl. the closure (training_step + backward)",
        ("lightning_hpo/builtin/mlp.py", "forward"): "MLP forward, train + val (torch)",
        ("optimization/automatic.py", "zero_grad_fn"): "zero_grad via Lightning",
        (
            "lightning_hpo/training/callbacks.py",
            "on_train_epoch_end",
        ): "RunCheckpoints.on_train_epoch_end (last.ckpt, best.ckpt)",
        (
            "bench_epoch.py",
            "_counting_save",
        ): "  ... of which Trainer.save_checkpoint (dump + torch.save)",
        ("pytorch/core/module.py", "log"): "LightningModule.log (4 calls/epoch)",
        ("fabric/loggers/tensorboard.py", "log_metrics"): "TensorBoard log_metrics (event writes)",
        ("trainer/call.py", "_call_callback_hooks"): "callback hook dispatch (all callbacks)",
        (
            "trainer/call.py",
            "_call_lightning_module_hook",
        ): "module hook dispatch (incl. training_step)",
        ("loops/evaluation_loop.py", "run"): "validation loop (all of it)",
        (
            "torch/nn/modules/module.py",
            "__setattr__",
        ): "nn.Module.__setattr__ (Lightning sets _current_fx_name per hook)",
        ("strategies/strategy.py", "batch_to_device"): "batch_to_device (no-op on CPU)",
        (
            "optimization/automatic.py",
            "run",
        ): "automatic optimization (closure: step+backward+optimizer)",
    }
    rows = []
    for (fname, _line, func), (_cc, nc, _tt, ct, _callers) in stats.stats.items():
        label = (
            wanted[("", "run_backward")]
            if "run_backward" in func
            else next(
                (
                    lab
                    for (frag, fn), lab in wanted.items()
                    if fn == func and frag and frag in fname
                ),
                None,
            )
        )
        if label:
            rows.append((label, nc, ct))
    rows.sort(key=lambda r: -r[2])
    print_table(
        ["item (cProfile, cumulative)", "calls", "s", "% of fits"],
        [(label, n, f"{ct:.3f}", f"{100 * ct / total:.1f}") for label, n, ct in rows],
        title=f"cProfile of {runs} x fit_seed({epochs} epochs), default RunConfig; total {total:.2f} s "
        f"(profiler overhead inflates Python-heavy items)",
    )
    if Profiler is not None:
        p = Profiler(interval=0.001)
        p.start()
        for _ in range(runs):
            runner.run("project", epochs, 2)
        p.stop()
        print("\npyinstrument (library frames collapsed):")
        print(p.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--short", type=int, default=5)
    ap.add_argument("--long", type=int, default=30)
    ap.add_argument(
        "--threads",
        default="1,2",
        help="comma list of torch thread counts; all variants run at the first, --also at the others (default: %(default)s)",
    )
    ap.add_argument(
        "--also",
        default="plain,project",
        help="variants also timed at the other thread counts (default: %(default)s)",
    )
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of paths to time")
    ap.add_argument("--profile", action="store_true", help="also profile the project path")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 2 vs 6 epochs")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.short, args.long = 2, 2, 6
    threads = [int(t) for t in args.threads.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    args.also = {"plain", *(v.strip() for v in args.also.split(","))}
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    seed = 0
    console.quiet_lightning()
    quiet()
    root = Path(tempfile.mkdtemp(prefix="bench_epoch_"))
    runner = Runner(root, seed)
    # Warm-up: first Trainer, TensorBoard import, torch kernels.
    for v in variants:
        runner.run(v, 2, threads[0])

    tasks = [
        (v, t, e)
        for t in threads
        for v in variants
        if t == threads[0] or v in args.also
        for e in (args.short, args.long)
    ]
    wall: dict[tuple[str, int, int], dict[int, float]] = {}
    cpu: dict[tuple[str, int, int], dict[int, float]] = {}
    histories: dict[str, list[float]] = {}
    epochs_of: dict[tuple[str, int], list[float]] = {}  # whole epochs of the long runs
    for rep, (v, t, e) in interleaved(tasks, args.repeats, seed=1):
        w, c, hist = runner.run(v, e, t)
        wall.setdefault((v, t, e), {})[rep] = w
        cpu.setdefault((v, t, e), {})[rep] = c
        if e == args.long:
            epochs_of.setdefault((v, t), []).extend(epoch_times())
        if e == args.long and t == threads[0]:
            histories[v] = hist
    torch.set_num_threads(threads[0])

    span = args.long - args.short
    R = range(args.repeats)

    def per_epoch(times, v, t):
        """Per-repeat estimates and the estimate from the medians of the two lengths."""
        per = [(times[(v, t, args.long)][r] - times[(v, t, args.short)][r]) / span for r in R]
        of_medians = (
            median(times[(v, t, args.long)].values()) - median(times[(v, t, args.short)].values())
        ) / span
        return per, of_medians

    rows = []
    summary = {}
    for t in threads:
        base_w, base_wm = per_epoch(wall, "plain", t)
        base_c, base_cm = per_epoch(cpu, "plain", t)
        for v in variants:
            if (v, t, args.long) not in wall:
                continue
            w, wm = per_epoch(wall, v, t)
            c, cm = per_epoch(cpu, v, t)
            setup = median(wall[(v, t, args.short)].values()) - args.short * wm
            ratios = [a / b for a, b in zip(w, base_w)]
            lo, hi = iqr(ratios)
            one, base_one = median(epochs_of[(v, t)]), median(epochs_of[("plain", t)])
            summary[(v, t)] = (wm / base_wm, cm / base_cm, one / base_one)
            writes = runner.writes.get((v, args.long))
            wrote = "-" if writes is None else f"{writes[0]} / {writes[1]}"
            rows.append(
                (
                    v,
                    t,
                    fmt_s(wm),
                    f"{wm / base_wm:.2f}",
                    f"{median(ratios):.2f} [{lo:.2f}, {hi:.2f}]",
                    fmt_s(cm),
                    f"{cm / base_cm:.2f}",
                    fmt_s(setup, 3),
                    f"{fmt_s(one)} ({one / base_one:.2f})",
                    wrote,
                )
            )
    print_table(
        [
            "path",
            "threads",
            "wall s/epoch",
            "x plain (wall)",
            "per-repeat ratios: median [IQR]",
            "CPU s/epoch",
            "x plain (CPU)",
            "setup s/run (wall)",
            "median epoch s (x plain)",
            f".ckpt writes / global_step ({args.long} epochs)",
        ],
        rows,
        title=f"bench_epoch: s/epoch = (median {args.long}-epoch run - median {args.short}-epoch run) / {span}; "
        f"{args.repeats} interleaved repeats; ratios to the plain loop at the same thread count; "
        f"median epoch: of the {args.long}-epoch runs' whole epochs after the first, timed from "
        "one epoch's start to the next",
    )
    # Correctness: same seed, same RNG use, so the curves should agree.
    if "plain" in histories and "project" in histories:
        p, q = histories["plain"], histories["project"]
        diff = max(abs(a - b) for a, b in zip(p, q))
        print(
            f"\nfinal val_loss after {args.long} epochs, seed {seed}: plain {p[-1]:.6g}, project {q[-1]:.6g}; "
            f"max |difference| over the curve {diff:.3g}"
        )
        for v in variants:
            if v not in ("plain", "project") and v in histories:
                print(f"  {v}: final {histories[v][-1]:.6g}")
    for t in threads:
        if ("project", t) in summary:
            rw, rc, re = summary[("project", t)]
            print(
                f"target (project <= 1.5x plain), {t} thread(s): {rw:.2f}x wall, {rc:.2f}x CPU, "
                f"{re:.2f}x the median whole epoch -> {'met' if max(rw, re) <= 1.5 else 'missed'}"
            )
    if args.profile:
        profile(runner, args.long, 2 if args.quick else 3)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
