"""`tune.py report`: what a study found, and whether its search space and pruner served it.

The report reads a study without changing it: it works on a study another process is
still running, and never creates a study, a storage file, or Optuna's tables in a
database that lacks them (a PostgreSQL or MySQL URL to an empty database is refused
and left empty). It covers

- trial counts by state, the best trial and a top-k table;
- parameter importances (Optuna's PED-ANOVA evaluator, which is deterministic);
- boundary warnings: the best value close to an end of its range (measured in the
  parameter's own scale, log or linear) with a widened range to try;
- a pruning audit: epochs saved by pruning, how accurate the pruner's stored
  predictions were on completed trials, and a replay of the best completed curves
  through the pruner (how many of them it would have cut);
- PNG plots under ``<output>/<project>_Opt/report/``.

Categorical parameters get a boundary warning only when their choices are at least
three numbers in strictly monotone order (e.g. ``[32, 64, 128]``) and the best is the
first or the last: only then does "beyond the end" mean something. The suggested extra
choice continues the choices' arithmetic or geometric progression.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_hpo.attrs import RUN_DIR
from lightning_hpo.cli import check_writable, run_command
from lightning_hpo.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from lightning_hpo.pruner import PFLPruner
    from lightning_hpo.search import OptimizeConfig, Param

EDGE_MARGIN = 0.05  # a best value within 5% of the range's width from an end is "at the edge"
LOG_DECADES = 1.5  # plot values spanning more decades than this on a log axis
PROGRESS_EDGES = (0.25, 0.5, 0.75, 1.0)  # buckets of the audit's prediction errors
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
STATE_COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:green", "WAITING": "tab:gray"}
IMPORTANCE_EVALUATOR = "PED-ANOVA"


# --------------------------------------------------------------------------- command line


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune.py report", description="Summarise a study: best trials, importances, range edges, a pruning audit and plots. Read-only.")
    p.add_argument("--run-config", "--run_config", default="configs/run_template.yaml", help="run config YAML (default: %(default)s)")
    p.add_argument("--optimize-config", "--optimize_config", default="configs/optimize_template.yaml", help="optimize config YAML (default: %(default)s)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<project>_Opt.db)")
    p.add_argument("--study-name", help="override the config's study_name")
    p.add_argument("--output", default="runs", help="root folder for runs; plots go to <output>/<project>_Opt/reports/<study_name> (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object with every number and plot path, nothing else")
    p.add_argument("--top-k", type=int, default=10, help="trials in the top table and in the pruner replay (default: %(default)s)")
    p.add_argument("--no-plots", action="store_true", help="write no PNGs")
    p.add_argument("--debug", action="store_true", help="show tracebacks and Optuna's warnings")
    return p


def report_main(argv: Sequence[str] | None = None) -> int:
    args = report_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_command(_report, args)


def _report(args: argparse.Namespace) -> int:
    from lightning_hpo.config import load_run_config
    from lightning_hpo.search import load_optimize_config
    from lightning_hpo.storage import default_url, redact

    run = load_run_config(args.run_config)
    opt = load_optimize_config(args.optimize_config, run)
    if args.study_name:
        opt.study_name = args.study_name
    if args.top_k < 1:
        raise ConfigError("--top-k", None, f"must be >= 1, got {args.top_k}", "e.g. --top-k 10")
    if not args.no_plots:
        check_writable(args.output, "--output")
    _quiet(args.debug)
    url = args.storage or default_url(run.project)
    study = open_study(url, opt.study_name)
    report = {"storage": redact(url), **build_report(study, opt, top_k=args.top_k), "plots": {}}
    if not args.no_plots:
        from lightning_hpo.tuning import report_folder

        report["plots"] = write_plots(study, opt, report, report_folder(run, opt, args.output))
    print(json.dumps(jsonable(report), indent=2) if args.json else format_text(report))
    return 0


def _quiet(debug: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING if debug else optuna.logging.ERROR)


def open_study(url: str, study_name: str) -> optuna.Study:
    """Load ``study_name`` from ``url`` without creating anything: no study, storage file,
    table or version stamp, whatever database the URL names.

    Raises:
        ConfigError: the storage file is missing, the database holds no Optuna tables,
            or the study is not in it (the message lists the studies that are).
    """
    import optuna

    from lightning_hpo.storage import open_storage, redact

    storage = open_storage(url, heartbeat=None, read_only=True)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if study_name not in names:
        held = f"studies there: {', '.join(names)}" if names else "it holds no studies"
        raise ConfigError("--study-name", study_name, f"no such study in {redact(url)}", f"{held}; pass --study-name")
    return optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())


# --------------------------------------------------------------------------- the numbers


def build_report(study: optuna.Study, opt: OptimizeConfig, *, top_k: int = 10) -> dict[str, Any]:
    """Every number of the report, from one snapshot of the study's trials."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    ranked = ranked_complete(trials, study.direction)
    best = ranked[0] if ranked else None
    return {
        "study": study.study_name,
        "metric": opt.metric,
        "direction": study.direction.name.lower(),
        "counts": state_counts(trials),
        "best": trial_summary(best) if best else None,
        "top_k": [trial_summary(t) for t in ranked[:top_k]],
        "importances": param_importances(study, sum(t.state == TrialState.COMPLETE for t in trials)),
        "boundary_warnings": boundary_warnings(best, opt.params) if best else [],
        "audit": {
            "epochs": epoch_savings(trials),
            "predictions": prediction_accuracy(ranked),
            "replay": _replay(ranked, top_k, opt, study.direction),
        },
    }


def _replay(ranked: Sequence[FrozenTrial], top_k: int, opt: OptimizeConfig, direction: Any) -> dict[str, Any]:
    pruner, stand_in = replay_pruner(opt)
    return {**replay_top_k(ranked, top_k, pruner, direction), "stand_in_for": opt.pruner["name"] if stand_in else None}


def state_counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    counts = {state: 0 for state in STATES}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts | {"total": len(trials)}


def ranked_complete(trials: Sequence[FrozenTrial], direction: Any) -> list[FrozenTrial]:
    """Completed trials, best first; ties go to the earlier trial."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return sorted(complete, key=lambda t: (sign * t.value, t.number))


def trial_summary(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "value": trial.value,
        "epochs": len(trial.intermediate_values),
        "params": dict(trial.params),
        "run_dir": trial.user_attrs.get(RUN_DIR),
    }


def param_importances(study: optuna.Study, n_complete: int) -> dict[str, Any]:
    """Optuna's PED-ANOVA importances (deterministic, needs no scikit-learn), normalised to 1."""
    import optuna

    result: dict[str, Any] = {"evaluator": IMPORTANCE_EVALUATOR, "complete_trials": n_complete, "params": {}, "message": None}
    if n_complete < 2:
        result["message"] = f"needs at least 2 complete trials, the study has {n_complete}"
        return result
    try:
        with warnings.catch_warnings():
            # Small studies make PED-ANOVA warn that its quantiles coincide; the numbers still stand.
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError) as exc:
        result["message"] = f"could not be computed ({exc})"
        return result
    result["params"] = {k: float(v) for k, v in values.items()}
    if not values:
        result["message"] = "no parameter varies across the complete trials"
    return result


# --------------------------------------------------------------------------- boundary warnings


def range_position(value: float, param: Param) -> float:
    """Where ``value`` sits in ``param``'s range, 0 at min and 1 at max, in the param's own scale."""
    low, high = float(param.min), float(param.max)
    if param.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def widened_range(param: Param, edge: str) -> tuple[float, float] | None:
    """``param``'s range with the ``edge`` end moved out by the range's width (log width for log ranges).

    A linear range that starts at or above 0 is not widened below 0, since such
    parameters (dropout, weight decay, sizes) rarely make sense negative; None when
    there is nothing to widen.
    """
    low, high = float(param.min), float(param.max)
    if param.log:
        ratio = high / low
        new_low, new_high = (low / ratio, high) if edge == "low" else (low, high * ratio)
    else:
        width = high - low
        new_low, new_high = (low - width, high) if edge == "low" else (low, high + width)
        if low >= 0 > new_low:
            new_low = 0.0
    if param.type == "int":
        new_low, new_high = math.floor(new_low), math.ceil(new_high)
        if param.log:
            new_low = max(new_low, 1)
    if (new_low, new_high) == (low, high):
        return None
    return new_low, new_high


def boundary_warnings(best: FrozenTrial, params: Sequence[Param], margin: float = EDGE_MARGIN) -> list[dict[str, Any]]:
    """Parameters whose best value lies within ``margin`` of an end of its configured range."""
    found = []
    for p in params:
        if p.name not in best.params:
            continue
        value = best.params[p.name]
        warning = _categorical_edge(p, value) if p.type == "categorical" else _numeric_edge(p, value, margin)
        if warning:
            found.append({"param": p.name, "value": value, "type": p.type, **warning})
    return found


def _numeric_edge(param: Param, value: float, margin: float) -> dict[str, Any] | None:
    if param.max <= param.min:
        return None
    position = range_position(value, param)
    if margin < position < 1 - margin:
        return None
    edge = "low" if position <= margin else "high"
    return {
        "edge": edge,
        "range": [param.min, param.max],
        "scale": "log" if param.log else "linear",
        "position": position,
        "suggested_range": widened_range(param, edge),
    }


def _categorical_edge(param: Param, value: Any) -> dict[str, Any] | None:
    """Only ordered numeric choices (3 or more) have ends worth extending."""
    choices = param.choices or []
    numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
    if len(choices) < 3 or not numeric or value not in (choices[0], choices[-1]):
        return None
    steps = [b - a for a, b in zip(choices, choices[1:])]
    if not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
        return None
    edge = "low" if value == choices[0] else "high"
    end, neighbour = (choices[0], choices[1]) if edge == "low" else (choices[-1], choices[-2])
    return {"edge": edge, "range": list(choices), "scale": "choices", "position": 0.0 if edge == "low" else 1.0, "suggested_choice": _continue(end, neighbour, steps)}


def _continue(end: float, neighbour: float, steps: list[float]) -> float:
    """The next choice beyond ``end``: the arithmetic step when the choices are evenly spaced, else geometric."""
    if len({round(s, 12) for s in steps}) == 1 or end <= 0 or neighbour <= 0:
        result = end + (end - neighbour)
    else:
        result = end * (end / neighbour)
    return int(round(result)) if isinstance(end, int) and isinstance(neighbour, int) else result


# --------------------------------------------------------------------------- pruning audit


def epoch_savings(trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Epochs trained (one per intermediate value, every trial) and epochs pruning saved.

    Epochs, not seed-epochs: with fused seeds one epoch trains all of a trial's seeds at
    once, so ``n_seeds`` is not used. ``saved`` sums ``epochs - run`` over PRUNED trials
    (``epochs`` user attr); ``saved_fraction`` is ``saved / (run + saved)``, the share of
    the cost of running every trial to the end.
    """
    from optuna.trial import TrialState

    from lightning_hpo.pruner import epochs_of

    run = sum(len(t.intermediate_values) for t in trials)
    saved = pruned = unknown = 0
    for t in trials:
        if t.state != TrialState.PRUNED:
            continue
        full = epochs_of(t)
        if full is None:
            unknown += 1  # made by another tool: its full length is not recorded
            continue
        pruned += 1
        saved += max(full - len(t.intermediate_values), 0)
    return {
        "run": run,
        "saved": saved,
        "full": run + saved,
        "saved_fraction": saved / (run + saved) if run + saved else None,
        "pruned_trials": pruned,
        "pruned_without_epochs": unknown,
    }


def prediction_accuracy(complete: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Stored PFL predictions against the value each completed trial really ended at.

    A prediction at the trial's last step is left out: pruning there saves nothing.
    Buckets go by how far the run was when the prediction was made, ``epoch / epochs``
    (the ``epochs`` user attr, else the trial's own length), and end at 25%, 50%, 75%
    and 100%.
    """
    from lightning_hpo.pruner import epochs_of, stored_predictions

    rows: list[tuple[float, float, float | None]] = []  # (progress, error, relative error)
    trials = 0
    for t in complete:
        if not t.intermediate_values:
            continue
        last_step = max(t.intermediate_values)
        epochs = epochs_of(t) or last_step + 1
        made = {s: p for s, p in stored_predictions(t).items() if s < last_step and math.isfinite(p)}
        trials += bool(made)
        for step, predicted in made.items():
            error = predicted - t.value
            relative = abs(error) / abs(t.value) if t.value else None
            rows.append(((step + 1) / epochs, error, relative))
    result = {"trials": trials, **_error_stats(rows), "buckets": []}
    lower = 0.0
    for upper in PROGRESS_EDGES:
        inside = [r for r in rows if lower < r[0] <= upper]
        result["buckets"].append({"progress": f"{lower:.0%}-{upper:.0%}", "upto": upper, **_error_stats(inside)})
        lower = upper
    return result


def _error_stats(rows: Sequence[tuple[float, float, float | None]]) -> dict[str, Any]:
    relative = [r[2] for r in rows if r[2] is not None]
    return {
        "predictions": len(rows),
        "mean_abs_error": statistics.fmean(abs(r[1]) for r in rows) if rows else None,
        "mean_rel_error": statistics.fmean(relative) if relative else None,
        "mean_error": statistics.fmean(r[1] for r in rows) if rows else None,  # > 0: PFL predicts too high
    }


def replay_pruner(opt: OptimizeConfig) -> tuple[PFLPruner, bool]:
    """A new instance of the config's pruner when it is a PFLPruner, else a stand-in
    PFLPruner built from whichever of the config's pruner kwargs it accepts (e.g.
    n_startup_trials). The flag says whether it is a stand-in."""
    from lightning_hpo.imports import accepted_kwargs
    from lightning_hpo.pruner import PFLPruner

    pruner = opt.make_pruner()
    if isinstance(pruner, PFLPruner):
        return pruner, False
    accepted = accepted_kwargs(PFLPruner) or set()
    return PFLPruner(**{k: v for k, v in (opt.pruner.get("kwargs") or {}).items() if k in accepted}), True


def replay_top_k(ranked: Sequence[FrozenTrial], top_k: int, pruner: PFLPruner, direction: Any) -> dict[str, Any]:
    """Replay each of the ``top_k`` best completed curves, step by step up to its
    second-to-last step, through ``pruner`` in an in-memory study holding every
    other completed trial. A prune there is a false prune: the trial ended among the
    best. Deterministic; trains nothing."""
    import optuna

    results = []
    for trial in ranked[:top_k]:
        if not trial.intermediate_values:
            continue
        memory = optuna.create_study(direction=direction)
        others = [t for t in ranked if t.number != trial.number]
        memory.add_trials(others)
        # A number no reference holds, so the pruner's "not itself" rule excludes nothing else.
        replayed = copy.copy(trial)
        replayed.number = len(others)
        results.append({"number": trial.number, "value": trial.value, **_replay_one(pruner, memory, replayed)})
    cut = sum(r["would_prune"] for r in results)
    return {
        "pruner": _describe(pruner),
        "replayed": len(results),
        "would_prune": cut,
        "false_prune_rate": cut / len(results) if results else None,
        "trials": results,
    }


def _replay_one(pruner: PFLPruner, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    from lightning_hpo.pruner import prefix_trial

    # Not the last step: training is over by then, so a prune there would cut nothing.
    for step in sorted(trial.intermediate_values)[:-1]:
        decision = pruner.evaluate(study, prefix_trial(trial, step))
        if decision.prune:
            return {"would_prune": True, "step": step, "epoch": step + 1, "reason": decision.reason, "pfl": decision.pfl, "threshold": decision.threshold, "score": decision.score, "overrule_bound": decision.overrule_bound}
    return {"would_prune": False, "step": None, "epoch": None, "reason": None, "pfl": None, "threshold": None, "score": None, "overrule_bound": None}


def _describe(pruner: Any) -> str:
    fields = {k.lstrip("_"): v for k, v in vars(pruner).items() if not k.endswith("cache") and not isinstance(v, (dict, list))}
    return f"{type(pruner).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})"


# --------------------------------------------------------------------------- text and JSON


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as None, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in params.items())


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_text(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [f"Study {report['study']} in {report.get('storage', '?')} ({report['metric']}, {report['direction']})"]
    counts = report["counts"]
    lines.append(f"Trials: {counts['total']} ({', '.join(f'{s.lower()} {counts[s]}' for s in STATES if counts.get(s))})")
    lines += _best_lines(report)
    lines += _top_lines(report)
    lines += _importance_lines(report["importances"])
    lines += _boundary_lines(report["boundary_warnings"])
    lines += _audit_lines(report["audit"], report["metric"])
    plots = report.get("plots")
    if plots:
        lines += ["", "Plots:"] + [f"  {path}" for path in plots.values()]
    return "\n".join(lines)


def _best_lines(report: dict[str, Any]) -> list[str]:
    best = report["best"]
    if best is None:
        return ["", "No trial completed yet, so there is no best trial."]
    lines = ["", f"Best trial {best['number']}: {report['metric']} {best['value']:.6g}"]
    lines += [f"  {k}: {_num(v)}" for k, v in best["params"].items()]
    lines.append(f"  run: {best['run_dir'] or '?'}")
    return lines


def _top_lines(report: dict[str, Any]) -> list[str]:
    rows = report["top_k"]
    if not rows:
        return []
    lines = ["", f"Top {len(rows)} complete trials", f"  {'rank':>4} {'trial':>5} {report['metric']:>12} {'epochs':>6}  params"]
    for rank, t in enumerate(rows, 1):
        lines.append(f"  {rank:>4} {t['number']:>5} {t['value']:>12.6g} {t['epochs']:>6}  {_params(t['params'])}")
    return lines


def _importance_lines(imp: dict[str, Any]) -> list[str]:
    lines = ["", f"Parameter importances ({imp['evaluator']}, {imp['complete_trials']} complete trials)"]
    if imp["message"]:
        return lines + [f"  {imp['message']}"]
    width = max(len(k) for k in imp["params"])
    for name, value in imp["params"].items():
        lines.append(f"  {name:<{width}}  {value:6.3f}  {'#' * round(value * 40)}")
    return lines


def _boundary_lines(found: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Search-space edges (best value within 5% of an end of its range)"]
    if not found:
        return lines + ["  none: every best value is inside its range"]
    for w in found:
        if w["scale"] == "choices":
            lines.append(f"  {w['param']} = {_num(w['value'])} is the {'first' if w['edge'] == 'low' else 'last'} of {w['range']}: try adding {_num(w['suggested_choice'])}")
            continue
        low, high = w["range"]
        gap = w["position"] if w["edge"] == "low" else 1 - w["position"]
        where = f"{_pct(max(gap, 0.0))} of the range ({w['scale']} scale) from its {'min' if w['edge'] == 'low' else 'max'}"
        hint = f"try [{_num(w['suggested_range'][0])}, {_num(w['suggested_range'][1])}]" if w["suggested_range"] else "0 is as far as it goes"
        lines.append(f"  {w['param']} = {_num(w['value'])} in [{_num(low)}, {_num(high)}] is {where}: {hint}")
    return lines


def _audit_lines(audit: dict[str, Any], metric: str) -> list[str]:
    e = audit["epochs"]
    lines = ["", "Pruning audit"]
    lines.append(f"  epochs (one per reported value, not per seed): {e['run']} run, {e['saved']} saved by pruning {e['pruned_trials']} trial(s) = {_pct(e['saved_fraction'])} of {e['full']} for running every trial to the end")
    if e["pruned_without_epochs"]:
        lines.append(f"  ({e['pruned_without_epochs']} pruned trial(s) lack the epochs user attr and are not counted)")
    p = audit["predictions"]
    if not p["predictions"]:
        lines.append("  predictions: none stored on complete trials (the pruner is not PFLPruner, or it never got past start-up)")
    else:
        lines.append(f"  predictions on {p['trials']} complete trial(s), {p['predictions']} decision(s): mean abs error {_num(p['mean_abs_error'])} {metric}, mean rel error {_pct(p['mean_rel_error'])}, bias {_num(p['mean_error'])}")
        for b in p["buckets"]:
            if b["predictions"]:
                lines.append(f"    at {b['progress']:>8} of the run: {b['predictions']:>4} decision(s), mean abs error {_num(b['mean_abs_error'])}, mean rel error {_pct(b['mean_rel_error'])}")
    r = audit["replay"]
    stand_in = f" (standing in for the config's {r['stand_in_for']})" if r.get("stand_in_for") else ""
    lines.append(f"  replay of the top {r['replayed']} complete trial(s) through {r['pruner']}{stand_in}: would prune {r['would_prune']} ({_pct(r['false_prune_rate'])} false prunes)")
    for t in r["trials"]:
        if t["would_prune"]:
            if t["reason"] == "overruled":  # predicted within the reference set, but far behind at the same epoch
                detail = f"best so far {_num(t['score'])} vs same-epoch bound {_num(t['overrule_bound'])} (overruled; predicted {_num(t['pfl'])})"
            else:
                detail = f"predicted {_num(t['pfl'])} vs threshold {_num(t['threshold'])}" if t["pfl"] is not None else t["reason"]
            lines.append(f"    trial {t['number']} ({metric} {t['value']:.4g}) after epoch {t['epoch']}: {detail}")
    return lines


# --------------------------------------------------------------------------- plots


def write_plots(study: optuna.Study, opt: OptimizeConfig, report: dict[str, Any], folder: Path) -> dict[str, str]:
    """Write the report's PNGs into ``folder``; return name -> path of those written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI toolkit to import
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    metric = report["metric"]
    written: dict[str, str] = {}
    plots: list[tuple[str, bool, Callable[[Path], None]]] = [
        ("history", bool(report["top_k"]), lambda path: plot_history(study, metric, path)),
        ("curves", any(t.intermediate_values for t in trials), lambda path: plot_curves(trials, metric, path, best=(report["best"] or {}).get("number"))),
        ("importances", bool(report["importances"]["params"]), lambda path: plot_importances(report["importances"], path)),
        ("slice", bool(report["top_k"]), lambda path: plot_slices(study, opt.params, metric, path)),
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


def plot_curves(trials: Sequence[FrozenTrial], metric: str, path: Path, best: int | None = None) -> None:
    """Every trial's curve, coloured by state, with pruned trials' predicted ends."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from lightning_hpo.pruner import epochs_of, trial_curve

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
    handles = [Line2D([], [], color=STATE_COLOURS.get(s, "black"), label=f"{s.lower()} ({n})") for s, n in seen.items()]
    if best is not None:
        handles.append(Line2D([], [], color="black", linewidth=2.2, label=f"best: trial {best}"))
    if predicted:
        handles.append(Line2D([], [], color="tab:brown", marker="x", linestyle="none", label=f"PFL prediction of a pruned trial ({predicted})"))
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
        ax.plot(epochs, curve, color=STATE_COLOURS.get(state, "black"), alpha=0.75 if state == "COMPLETE" else 0.55, linewidth=1.2, zorder=4 if state == "FAIL" else 2)


def _draw_prediction(ax: Any, trial: FrozenTrial, curve: list[float], target: int, log_y: bool) -> int:
    """Mark a pruned trial's last stored PFL at the target epoch, joined to where it stopped; 1 if drawn."""
    from optuna.trial import TrialState

    from lightning_hpo.pruner import stored_predictions

    predictions = stored_predictions(trial)
    if trial.state != TrialState.PRUNED or not predictions:
        return 0
    last = list(predictions.values())[-1]
    if not math.isfinite(last) or (log_y and last <= 0):
        return 0
    ax.plot([len(curve), target], [curve[-1], last], color=STATE_COLOURS["PRUNED"], linestyle=":", linewidth=0.8, alpha=0.6)
    ax.plot(target, last, marker="x", color="tab:brown", markersize=7, linestyle="none", zorder=6)
    return 1


def plot_importances(importances: dict[str, Any], path: Path) -> None:
    """Horizontal bars, most important on top."""
    import matplotlib.pyplot as plt

    names = list(importances["params"])[::-1]
    values = [importances["params"][n] for n in names]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 1.2 + 0.5 * len(names))))
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3, fontsize=9)
    ax.set_xlim(0, max(values + [0.0]) * 1.15 or 1.0)
    ax.set_xlabel(f"importance ({importances['evaluator']}, sums to 1)")
    ax.set_title(f"Parameter importances over {importances['complete_trials']} complete trials")
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
