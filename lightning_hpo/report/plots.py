"""The report's PNG plots (matplotlib, Agg backend): optimization history, every trial's
curve, parameter importances and Optuna's slice plot."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from lightning_hpo.config.search_space import Param
    from lightning_hpo.report.data import Importances, Report

LOG_DECADES = 1.5  # plot values spanning more decades than this on a log axis
STATE_COLOURS = {
    "COMPLETE": "tab:blue",
    "PRUNED": "tab:orange",
    "FAIL": "tab:red",
    "RUNNING": "tab:green",
    "WAITING": "tab:gray",
}


def write_plots(study: optuna.Study, report: Report, folder: Path) -> dict[str, str]:
    """Write the report's PNGs into ``folder``; return name -> path of those written. The
    slice plot shows the parameters the trials searched, as stored (``report.stored``)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import
    import matplotlib.pyplot as plt

    from lightning_hpo.report.stored import stored_params

    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    metric = report.metric
    best = report.best.number if report.best else None
    importances = report.importances
    params = stored_params(trials, None)
    written: dict[str, str] = {}
    plots: list[tuple[str, bool, Callable[[Path], None]]] = [
        ("history", bool(report.top_k), lambda path: plot_history(study, metric, path)),
        (
            "curves",
            any(t.intermediate_values for t in trials),
            lambda path: plot_curves(trials, metric, path, best=best),
        ),
        ("importances", bool(importances.params), lambda path: plot_importances(importances, path)),
        ("slice", bool(report.top_k), lambda path: plot_slices(study, params, metric, path)),
    ]
    for name, wanted, draw in plots:
        if not wanted:
            continue
        path = folder / f"{name}.png"
        # Optuna's plots switch the global style to ggplot; a context keeps all four
        # alike and leaves the caller's matplotlib settings as they were.
        with plt.style.context("ggplot"):
            draw(path)
        written[name] = str(path)
    return written


@contextlib.contextmanager
def _optuna_matplotlib():
    """Optuna's matplotlib module, with its ExperimentalWarning silenced for the call."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield optuna.visualization.matplotlib


def spans_decades(values: Sequence[float], decades: float = LOG_DECADES) -> bool:
    """Whether positive ``values`` span more than ``decades`` orders of magnitude (log axis)."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and math.log10(max(finite) / min(finite)) > decades


def _tidy_log_axis(axis: Any) -> None:
    """Readable ticks on a log axis: within two decades 1-2-5 steps as plain numbers
    (matplotlib would label every minor tick, overlapping), else its decades alone."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = sorted(axis.get_view_interval())
    axis.set_minor_formatter(NullFormatter())
    if low > 0 and math.log10(high / low) < 2:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _save(fig: Any, path: Path, tight: bool = True) -> None:
    """Save at a fixed size; ``tight=False`` for figures tight_layout cannot arrange, which
    are cropped to their content instead."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches=None if tight else "tight", pad_inches=0.2)
    plt.close(fig)


def plot_history(study: optuna.Study, metric: str, path: Path) -> None:
    """Optuna's optimization history (complete trials and the best so far)."""
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    with _optuna_matplotlib() as vis:
        ax = vis.plot_optimization_history(study, target_name=metric)
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if spans_decades(values):
        ax.set_yscale("log")
        _tidy_log_axis(ax.yaxis)
    ax.set_title(f"Optimization history: {study.study_name}")
    ax.set_xlabel("trial number")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.figure.set_size_inches(8, 5)
    _save(ax.figure, path)


def plot_curves(
    trials: Sequence[FrozenTrial], metric: str, path: Path, best: int | None = None
) -> None:
    """Every trial's curve, coloured by state, with pruned trials' predicted ends."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from lightning_hpo.pruners.records import epochs_of, trial_curve

    curves = {t.number: trial_curve(t) for t in trials}
    # Decided on the measured values alone: a prediction may fall below 0 and is then left out.
    log_y = spans_decades([v for c in curves.values() for v in c])
    longest = max((len(c) for c in curves.values()), default=1)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    seen: dict[str, int] = {}
    predicted = 0
    for t in trials:
        if not curves[t.number]:
            continue
        seen[t.state.name] = seen.get(t.state.name, 0) + 1
        _draw_trial(ax, t, curves[t.number], is_best=t.number == best)
        predicted += _draw_prediction(ax, t, curves[t.number], epochs_of(t) or longest, log_y)
    if log_y:
        ax.set_yscale("log")
        _tidy_log_axis(ax.yaxis)
    handles = [
        Line2D([], [], color=STATE_COLOURS.get(s, "black"), label=f"{s.lower()} ({n})")
        for s, n in seen.items()
    ]
    if best is not None:
        handles.append(Line2D([], [], color="black", linewidth=2.2, label=f"best: trial {best}"))
    if predicted:
        handles.append(
            Line2D(
                [],
                [],
                color="tab:brown",
                marker="x",
                linestyle="none",
                label=f"PFL prediction of a pruned trial ({predicted})",
            )
        )
    # Outside the axes: with many trials there is no free corner inside.
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.set_title(f"Validation curves: {metric} per epoch, one line per trial")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.set_ylabel(metric + (" (log scale)" if log_y else ""))
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def _draw_trial(ax: Any, trial: FrozenTrial, curve: list[float], is_best: bool) -> None:
    state = trial.state.name
    epochs = range(1, len(curve) + 1)
    if is_best:
        ax.plot(epochs, curve, color="black", linewidth=2.2, zorder=5)
    else:
        # Failed trials are few and short: drawn on top so they are not buried.
        ax.plot(
            epochs,
            curve,
            color=STATE_COLOURS.get(state, "black"),
            alpha=0.75 if state == "COMPLETE" else 0.55,
            linewidth=1.2,
            zorder=4 if state == "FAIL" else 2,
        )


def _draw_prediction(
    ax: Any, trial: FrozenTrial, curve: list[float], target: int, log_y: bool
) -> int:
    """Mark a pruned trial's last stored PFL at the target epoch, joined to where it stopped;
    1 if drawn."""
    from optuna.trial import TrialState

    from lightning_hpo.pruners.records import stored_predictions

    predictions = stored_predictions(trial)
    if trial.state != TrialState.PRUNED or not predictions:
        return 0
    last = list(predictions.values())[-1]
    if not math.isfinite(last) or (log_y and last <= 0):
        return 0
    ax.plot(
        [len(curve), target],
        [curve[-1], last],
        color=STATE_COLOURS["PRUNED"],
        linestyle=":",
        linewidth=0.8,
        alpha=0.6,
    )
    ax.plot(target, last, marker="x", color="tab:brown", markersize=7, linestyle="none", zorder=6)
    return 1


def plot_importances(importances: Importances, path: Path) -> None:
    """Horizontal bars, most important on top."""
    import matplotlib.pyplot as plt

    names = list(importances.params)[::-1]
    values = [importances.params[n] for n in names]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 1.2 + 0.5 * len(names))))
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=9)
    ax.set_xlim(0, max(values + [0.0]) * 1.15 or 1.0)
    ax.set_xlabel(f"importance ({importances.evaluator}, sums to 1)")
    ax.set_title(f"Parameter importances over {importances.complete_trials} complete trials")
    _save(fig, path)


def plot_slices(study: optuna.Study, params: Sequence[Param], metric: str, path: Path) -> None:
    """Optuna's slice plot of each searched parameter (log x for log ranges)."""
    import matplotlib
    import numpy as np
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = [p.name for p in params if any(p.name in t.params for t in complete)]
    # Optuna gives each parameter half the default figure width.
    with _optuna_matplotlib() as vis, matplotlib.rc_context({"figure.figsize": (9.0, 4.8)}):
        axes = np.atleast_1d(vis.plot_slice(study, params=names or None, target_name=metric))
    fig = axes.flat[0].figure
    log_y = spans_decades([t.value for t in complete])
    kinds = {p.name: p.type for p in params}
    for ax in axes.flat:
        if log_y:
            ax.set_yscale("log")
            _tidy_log_axis(ax.yaxis)
        if ax.get_xscale() == "log":
            _tidy_log_axis(ax.xaxis)
        if kinds.get(ax.get_xlabel()) == "int":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    for extra in fig.axes[len(axes.flat) :]:  # Optuna's colour bar of trial numbers
        extra.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.flat[0].set_title("")
    fig.suptitle(f"Slice plot: {metric} of complete trials against each parameter")
    # Optuna placed a colour bar beside the axes, which tight_layout cannot handle.
    _save(fig, path, tight=False)
