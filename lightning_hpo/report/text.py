"""The report as text for a terminal."""

from __future__ import annotations

from typing import Any

from lightning_hpo.report.data import Audit, ChoiceEdge, EdgeWarning, Importances, Report
from lightning_hpo.report.numbers import STATES


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in params.items())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_text(report: Report) -> str:
    """The report as text for a terminal."""
    storage = "?" if report.storage is None else report.storage
    value = report.metric if report.objective == "last" else f"{report.metric} at its best epoch"
    lines = [f"Study {report.study} in {storage} ({value}, {report.direction})"]
    counts = report.counts
    by_state = ", ".join(f"{s.lower()} {counts[s]}" for s in STATES if counts.get(s))
    lines.append(f"Trials: {counts['total']} ({by_state})")
    lines += _best_lines(report)
    lines += _top_lines(report)
    lines += _importance_lines(report.importances)
    lines += _boundary_lines(report.boundary_warnings)
    lines += _audit_lines(report.audit, report.metric)
    if report.plots:
        lines += ["", "Plots:"] + [f"  {path}" for path in report.plots.values()]
    return "\n".join(lines)


def _best_lines(report: Report) -> list[str]:
    best = report.best
    if best is None:
        return ["", "No trial completed yet, so there is no best trial."]
    lines = ["", f"Best trial {best.number}: {report.metric} {best.value:.6g}"]
    lines += [f"  {k}: {_num(v)}" for k, v in best.params.items()]
    lines.append(f"  run: {best.run_dir or '?'}")
    return lines


def _top_lines(report: Report) -> list[str]:
    rows = report.top_k
    if not rows:
        return []
    header = f"  {'rank':>4} {'trial':>5} {report.metric:>12} {'epochs':>6}  params"
    lines = ["", f"Top {len(rows)} complete trials", header]
    for rank, t in enumerate(rows, 1):
        row = f"  {rank:>4} {t.number:>5} {t.value:>12.6g} {t.epochs:>6}  {_params(t.params)}"
        lines.append(row)
    return lines


def _importance_lines(imp: Importances) -> list[str]:
    heading = f"Parameter importances ({imp.evaluator}, {imp.complete_trials} complete trials)"
    lines = ["", heading]
    if imp.message:
        return lines + [f"  {imp.message}"]
    width = max(len(k) for k in imp.params)
    for name, value in imp.params.items():
        lines.append(f"  {name:<{width}}  {value:6.3f}  {'#' * round(value * 40)}")
    return lines


def _boundary_lines(found: list[EdgeWarning]) -> list[str]:
    lines = ["", "Search-space edges (best value within 5% of an end of its range)"]
    if not found:
        return lines + ["  none: every best value is inside its range"]
    for w in found:
        if isinstance(w, ChoiceEdge):
            which = "first" if w.edge == "low" else "last"
            lines.append(
                f"  {w.param} = {_num(w.value)} is the {which} of {w.range}: "
                f"try adding {_num(w.suggested_choice)}"
            )
            continue
        low, high = w.range
        gap = w.position if w.edge == "low" else 1 - w.position
        end = "min" if w.edge == "low" else "max"
        where = f"{_pct(max(gap, 0.0))} of the range ({w.scale} scale) from its {end}"
        suggested = w.suggested_range
        if suggested:
            hint = f"try [{_num(suggested[0])}, {_num(suggested[1])}]"
        else:
            hint = "0 is as far as it goes"
        lines.append(
            f"  {w.param} = {_num(w.value)} in [{_num(low)}, {_num(high)}] is {where}: {hint}"
        )
    return lines


def _audit_lines(audit: Audit, metric: str) -> list[str]:
    e = audit.epochs
    lines = ["", "Pruning audit"]
    lines.append(
        f"  epochs (one per reported value, not per seed): {e.run} run, {e.saved} saved by "
        f"pruning {e.pruned_trials} trial(s) = {_pct(e.saved_fraction)} of {e.full} for "
        "running every trial to the end"
    )
    if e.pruned_without_epochs:
        lines.append(
            f"  ({e.pruned_without_epochs} pruned trial(s) lack the epochs user attr "
            "and are not counted)"
        )
    p = audit.predictions
    if not p.predictions:
        lines.append(
            "  predictions: none stored on complete trials (the pruner is not PFLPruner, "
            "or it never got past start-up)"
        )
    else:
        lines.append(
            f"  predictions on {p.trials} complete trial(s), {p.predictions} decision(s): "
            f"mean abs error {_num(p.mean_abs_error)} {metric}, "
            f"mean rel error {_pct(p.mean_rel_error)}, bias {_num(p.mean_error)}"
        )
        for b in p.buckets:
            if b.predictions:
                lines.append(
                    f"    at {b.progress:>8} of the run: {b.predictions:>4} decision(s), "
                    f"mean abs error {_num(b.mean_abs_error)}, "
                    f"mean rel error {_pct(b.mean_rel_error)}"
                )
    r = audit.replay
    whose = {"config": "the config's", "study": "the study's"}.get(r.pruner_from or "", "")
    stand_in = f" (standing in for {whose} {r.stand_in_for})" if r.stand_in_for else ""
    if r.pruner_from is None:
        stand_in = " (the study stores no pruner: give --optimize-config to replay its own)"
    lines.append(
        f"  replay of the top {r.replayed} complete trial(s) through {r.pruner}{stand_in}: "
        f"would prune {r.would_prune} ({_pct(r.false_prune_rate)} false prunes)"
    )
    for t in r.trials:
        if not t.would_prune:
            continue
        # The forecast, calibrated on the other completed trials, and its probability of
        # ending at or better than the top_k-th best of them.
        if t.pfl is not None:
            band = f", band {_num(t.band)}" if t.band else ""
            detail = (
                f"predicted {_num(t.pfl)}{band}, probability {_pct(t.probability)} of ending "
                f"at or better than {_num(t.threshold)}"
            )
        else:
            detail = t.reason
        lines.append(
            f"    trial {t.number} ({metric} {t.value:.4g}) after epoch {t.epoch}: {detail}"
        )
    return lines
