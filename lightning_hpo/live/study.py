"""tune.py's live region: the study's counts out of its total, the best so far, the
elapsed time and an ETA, and each running trial's epoch ``e/E`` with its current metric,
read from the study's storage, so it shows every worker's trials alike (this process's,
``--workers`` children's, SLURM jobs').

A running trial's epoch is its last reported step (the pruning callback reports the
metric at step = epoch) plus one, out of its ``epochs`` user attribute. The ETA counts a
running trial's epochs as that part of a trial done.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lightning_hpo.attrs import EPOCHS_ATTR
from lightning_hpo.config.optimize import OptimizeConfig
from lightning_hpo.live.screen import clock, eta, short
from lightning_hpo.tuning.study import counting, state_counts

MAX_ROWS = 12  # running trials shown; the rest are counted on one line


def trial_epoch(trial: FrozenTrial) -> tuple[int, int | None, float | None]:
    """A running trial's epochs done, of how many (None before it says), and its latest metric."""
    total = trial.user_attrs.get(EPOCHS_ATTR)
    if not trial.intermediate_values:
        return 0, total, None
    step = max(trial.intermediate_values)
    return step + 1, total, trial.intermediate_values[step]


def _best(trials: list[FrozenTrial], direction: StudyDirection) -> str:
    """``best v (trial n)`` from the trials already read (``study.best_trial`` would read
    the storage again), as the progress line has it; ``best -`` before any completes."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return "best -"
    if direction == StudyDirection.MINIMIZE:
        best = min(complete, key=lambda t: (t.value, t.number))
    else:
        best = max(complete, key=lambda t: (t.value, -t.number))
    return f"best {best.value:.5g} (trial {best.number})"


class StudyView:
    """``render()`` for ``live.screen.Screen``: reads the study (once per call) and draws it.

    ``study`` may be set after the display starts (``watch``): tune() opens the study itself.
    """

    def __init__(self, opt: OptimizeConfig, study: optuna.Study | None = None):
        self.opt, self.study = opt, study
        self.start = time.monotonic()
        self._done_at_start: float | None = None

    def watch(self, study: optuna.Study) -> None:
        self.study = study

    def __call__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        elapsed = time.monotonic() - self.start
        if self.study is None:
            return Text(f"opening the study ... {clock(elapsed)}", style="dim")
        trials = self.study.get_trials(deepcopy=False)
        total = self.opt.trials
        finished = sum(t.state.is_finished() for t in counting(trials))
        running = sorted(
            (t for t in trials if t.state == TrialState.RUNNING), key=lambda t: t.number
        )
        parts = [trial_epoch(t) for t in running]
        done = finished + sum(min(1.0, e / n) for e, n, _ in parts if n)
        if self._done_at_start is None:
            self._done_at_start = done
        complete, pruned, failed = state_counts(trials)
        best = _best(trials, self.study.direction)
        head = Table.grid(padding=(0, 1))
        head.add_row(
            Text(f"trials {finished}/{total}", style="bold"),
            ProgressBar(total=max(total, 1), completed=min(finished, total), width=24),
            Text(f"done {complete}, pruned {pruned}, failed {failed} | {best}"),
        )
        left = eta(done, total, self._done_at_start, elapsed)
        rows = Table.grid(padding=(0, 2))
        for t, (e, n, value) in list(zip(running, parts))[:MAX_ROWS]:
            metric = (
                f"{self.opt.metric} {short(value)}" if value is not None else self.opt.metric + " -"
            )
            params = ", ".join(f"{k}={short(v)}" for k, v in t.params.items())
            rows.add_row(
                f"  trial {t.number}",
                ProgressBar(total=n or 1, completed=min(e, n or 0), width=16),
                f"epoch {e}/{n if n else '?'}",
                metric,
                Text(params, overflow="ellipsis", no_wrap=True),
            )
        lines = [
            head,
            Text(
                f"  running {len(running)} | elapsed {clock(elapsed)} | ETA {clock(left)}",
                style="dim",
            ),
            rows,
        ]
        if len(running) > MAX_ROWS:
            lines.append(Text(f"  ... and {len(running) - MAX_ROWS} more running"))
        return Group(*lines)
