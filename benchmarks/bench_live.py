"""The live display's cost per epoch, against plain lines, side by side.

Seconds per epoch of the default run config (3 fused seeds, train.py's path: TensorBoard,
best and last checkpoints) measured from the epochs' own end times (the first epoch's end
to the last's, over the epochs between), so start-up and teardown do not count: wall time,
and this process's CPU time (every thread's, the display's included; less disturbed by the
machine's other work). Every repeat runs every path once, in a shuffled order; the table
shows medians over repeats and the median of the per-repeat ratios to ``plain``. On a busy
machine those ratios swing more than the display can cost, so the display's own cost is
measured directly too: the CPU time its thread used (storage reads and drawings, over the
whole run, per epoch), against the CPU time of a plain epoch. Last, the time one drawing
of each region takes.

Paths:

* ``plain``: no display (what a log file or a pipe gets).
* ``live train.py``: ``live.seeds.SeedBoard`` in a ``live.screen.Screen``, told every epoch,
  redrawn once a second, as train.py shows it in a terminal.
* ``live tune.py``: ``live.study.StudyView`` in a ``Screen``, reading an SQLite study of
  ``--trials`` finished trials (``--epochs`` intermediate values each) once a second while
  the run trains, as tune.py shows a study in a terminal.

The display draws into a terminal console (``force_terminal``) whose file is
``os.devnull``: the drawing is paid here, the terminal's own work is another process's.

Run: ``python benchmarks/bench_live.py`` (about 4 minutes on 2 busy cores), ``--quick`` for
a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, fmt_s, interleaved, iqr, median, print_table, quiet  # noqa: E402

quiet()

import optuna  # noqa: E402
from optuna.distributions import FloatDistribution  # noqa: E402
from optuna.trial import create_trial  # noqa: E402

from lightning_hpo.attrs import EPOCHS_ATTR  # noqa: E402
from lightning_hpo.config.optimize import optimize_config_from_dict  # noqa: E402
from lightning_hpo.config.run import build, load_run_config  # noqa: E402
from lightning_hpo.console import quiet_lightning  # noqa: E402
from lightning_hpo.live.screen import Screen  # noqa: E402
from lightning_hpo.live.seeds import SeedBoard  # noqa: E402
from lightning_hpo.live.study import StudyView  # noqa: E402
from lightning_hpo.metrics import VAL_LOSS  # noqa: E402
from lightning_hpo.training.runs import train  # noqa: E402

PATHS = ("plain", "live train.py", "live tune.py")


def filled_study(url: str, trials: int, epochs: int) -> optuna.Study:
    """An SQLite study holding ``trials`` finished trials of ``epochs`` values each."""
    study = optuna.create_study(storage=url, study_name="bench")
    lr = FloatDistribution(1e-4, 1e-1, log=True)
    for k in range(trials):
        study.add_trial(
            create_trial(
                value=1.0 / (k + 1),
                params={"optimizer_config_lr": 1e-3},
                distributions={"optimizer_config_lr": lr},
                intermediate_values={e: 1.0 / (k + e + 1) for e in range(epochs)},
                user_attrs={EPOCHS_ATTR: epochs},
            )
        )
    running = study.ask({"optimizer_config_lr": lr})  # the trial "now training"
    running.set_user_attr(EPOCHS_ATTR, epochs)
    running.report(0.5, 0)
    return study


class TimedScreen(Screen):
    """A ``Screen`` that keeps the CPU time its display thread used (reads and drawings)."""

    cpu = 0.0

    def _run(self) -> None:
        try:
            super()._run()
        finally:
            self.cpu = time.thread_time()


def seconds_per_epoch(
    cfg, path: str, study: optuna.Study, opt, out: Path
) -> tuple[float, float, float]:
    """(wall, CPU, display thread's CPU) seconds per epoch of one run on ``path``."""
    stamps: list[tuple[float, float]] = []
    board = SeedBoard(cfg.seeds, cfg.epochs, VAL_LOSS)

    def on_epoch(epoch: int, values: dict[int, float]) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
        if path == "live train.py":
            board.epoch(epoch, values)

    render = {"live train.py": board, "live tune.py": StudyView(opt, study)}.get(path)
    with open(os.devnull, "w") as devnull:
        screen = TimedScreen(render, file=devnull, force_terminal=True) if render else None
        with screen or contextlib.nullcontext():
            train(cfg, out, on_epoch=on_epoch)
    shutil.rmtree(out, ignore_errors=True)
    (wall0, cpu0), (wall1, cpu1) = stamps[0], stamps[-1]
    shown = screen.cpu / len(stamps) if screen else 0.0  # the whole run's: an upper bound
    return (wall1 - wall0) / (len(stamps) - 1), (cpu1 - cpu0) / (len(stamps) - 1), shown


def drawing_ms(render, repeats: int = 50) -> float:
    """Milliseconds one drawing of ``render`` takes: read (the study) and rendered to a terminal."""
    from rich.console import Console

    with open(os.devnull, "w") as devnull:
        console = Console(file=devnull, force_terminal=True, width=120)
        start = time.perf_counter()
        for _ in range(repeats):
            console.print(render())
        return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--trials", type=int, default=200, help="finished trials in the watched study")
    p.add_argument("--quick", action="store_true", help="2 repeats of 4 epochs")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.epochs = 2, 4
    quiet_lightning()
    cfg = load_run_config(ROOT / "configs" / "run_template.yaml", {"device": "cpu"})
    cfg.epochs = args.epochs
    build(cfg, "<run template>")
    tmp = Path(tempfile.mkdtemp(prefix="bench_live_"))
    study = filled_study(f"sqlite:///{tmp}/study.db", args.trials, args.epochs)
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1e-4, "max": 1e-1, "log": True}}}
    opt = optimize_config_from_dict(
        {"study_name": "bench", "trials": args.trials + 10, "search_space": space},
        cfg,
        "<bench>",
    )
    wall: dict[str, list[float]] = {path: [None] * args.repeats for path in PATHS}
    cpu: dict[str, list[float]] = {path: [None] * args.repeats for path in PATHS}
    display: dict[str, list[float]] = {path: [None] * args.repeats for path in PATHS}
    try:
        for rep, path in interleaved(PATHS, args.repeats):
            out = tmp / f"runs_{rep}"
            measured = seconds_per_epoch(cfg, path, study, opt, out)
            wall[path][rep], cpu[path][rep], display[path][rep] = measured
        board = SeedBoard(cfg.seeds, cfg.epochs, VAL_LOSS)
        board.epoch(3, dict.fromkeys(cfg.seeds, 0.01))
        view = StudyView(opt, study)
        draws = {"live train.py": drawing_ms(board), "live tune.py": drawing_ms(view)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for path in PATHS:
        row = [path]
        for times in (wall, cpu):
            low, high = iqr(times[path])
            ratios = [t / b for t, b in zip(times[path], times["plain"])]
            row += [
                f"{fmt_s(median(times[path]))} ({fmt_s(low)}-{fmt_s(high)})",
                f"{median(ratios):.3f} ({', '.join(f'{r:.2f}' for r in ratios)})",
            ]
        shares = [d / c for d, c in zip(display[path], cpu["plain"])]
        row.append(
            f"{median(display[path]) * 1000:.1f} ms ({median(shares) * 100:.2f} %)"
            if path in draws
            else "-"
        )
        row.append(f"{draws[path]:.1f}" if path in draws else "-")
        rows.append(row)
    print_table(
        [
            "path",
            "wall s/epoch (IQR)",
            "wall ratio to plain (per repeat)",
            "CPU s/epoch (IQR)",
            "CPU ratio to plain (per repeat)",
            "display thread's CPU per epoch (of plain's CPU)",
            "one drawing, ms",
        ],
        rows,
        title=f"default run config, {len(cfg.seeds)} fused seeds, {args.epochs} epochs, "
        f"{args.repeats} interleaved repeats; tune.py's view reads {args.trials} finished trials",
    )


if __name__ == "__main__":
    main()
