"""The report's numbers: computed from one snapshot of a study's trials, changing nothing.

- trial counts by state, the best trial and a top-k table;
- parameter importances (Optuna's PED-ANOVA evaluator, which is deterministic);
- boundary warnings: the best value close to an end of its range (measured in the
  parameter's own scale, log or linear) with a widened range to try;
- a pruning audit: epochs saved by pruning, how accurate the pruner's stored
  predictions were on completed trials, and a replay of the best completed curves
  through the pruner (how many of them it would have cut: ``report.replay``).

Categorical parameters get a boundary warning only when their choices are at least
three numbers in strictly monotone order (e.g. ``[32, 64, 128]``) and the best is the
first or the last: only then does "beyond the end" mean something. The suggested extra
choice continues the choices' arithmetic or geometric progression.

Each part of the report is a frozen dataclass of ``report.data``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lightning_hpo.attrs import RUN_DIR
from lightning_hpo.report.data import (
    Audit,
    ChoiceEdge,
    EdgeWarning,
    EpochSavings,
    ErrorStats,
    Importances,
    PredictionAccuracy,
    ProgressBucket,
    RangeEdge,
    Report,
    TrialSummary,
)

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from lightning_hpo.config.optimize import OptimizeConfig
    from lightning_hpo.config.search_space import Param

EDGE_MARGIN = 0.05  # a best value within 5% of the range's width from an end is "at the edge"
PROGRESS_EDGES = (0.25, 0.5, 0.75, 1.0)  # buckets of the audit's prediction errors
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
IMPORTANCE_EVALUATOR = "PED-ANOVA"


# --------------------------------------------------------------------------- the numbers


def build_report(
    study: optuna.Study,
    opt: OptimizeConfig | None = None,
    *,
    top_k: int = 10,
) -> Report:
    """Every number of the report, from one snapshot of the study's trials, describing
    the study as stored (``report.stored``). ``opt``, a config the caller checked against
    the study (``check_compatible``), gives the pruner to replay instead of the stored one."""
    from optuna.trial import TrialState

    from lightning_hpo.report.replay import replay_study
    from lightning_hpo.report.stored import replay_spec, stored_metric, stored_params

    trials = study.get_trials(deepcopy=False)
    ranked = ranked_complete(trials, study.direction)
    best = ranked[0] if ranked else None
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    metric, objective = stored_metric(study, opt)
    pruner, source = replay_spec(study, opt)
    return Report(
        study=study.study_name,
        metric=metric,
        objective=objective,
        direction=study.direction.name.lower(),
        counts=state_counts(trials),
        best=trial_summary(best) if best else None,
        top_k=[trial_summary(t) for t in ranked[:top_k]],
        importances=param_importances(study, n_complete),
        boundary_warnings=boundary_warnings(best, stored_params(trials, best)) if best else [],
        audit=Audit(
            epochs=epoch_savings(trials),
            predictions=prediction_accuracy(ranked),
            replay=replay_study(
                ranked,
                [t for t in trials if t.state == TrialState.PRUNED],
                top_k,
                pruner,
                source,
                study.direction,
            ),
        ),
    )


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


def trial_summary(trial: FrozenTrial) -> TrialSummary:
    return TrialSummary(
        number=trial.number,
        value=trial.value,
        epochs=len(trial.intermediate_values),
        params=dict(trial.params),
        run_dir=trial.user_attrs.get(RUN_DIR),
    )


def param_importances(study: optuna.Study, n_complete: int) -> Importances:
    """Optuna's PED-ANOVA importances (deterministic, needs no scikit-learn), normalised to 1."""
    import optuna

    def result(params: dict[str, float] | None = None, message: str | None = None) -> Importances:
        return Importances(IMPORTANCE_EVALUATOR, n_complete, params or {}, message)

    if n_complete < 2:
        return result(message=f"needs at least 2 complete trials, the study has {n_complete}")
    try:
        with warnings.catch_warnings():
            # Small studies make PED-ANOVA warn that its quantiles coincide; the numbers
            # still stand.
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        return result(message=f"could not be computed ({exc})")
    params = {k: float(v) for k, v in values.items()}
    return result(params, None if values else "no parameter varies across the complete trials")


# --------------------------------------------------------------------------- boundary warnings


def range_position(value: float, param: Param) -> float:
    """Where ``value`` sits in ``param``'s range, 0 at min and 1 at max, in the param's own
    scale."""
    low, high = float(param.min), float(param.max)
    if param.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


def widened_range(param: Param, edge: str) -> tuple[float, float] | None:
    """``param``'s range with the ``edge`` end moved out by the range's width (log width for
    log ranges).

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


def boundary_warnings(
    best: FrozenTrial, params: Sequence[Param], margin: float = EDGE_MARGIN
) -> list[EdgeWarning]:
    """Parameters whose best value lies within ``margin`` of an end of its configured range."""
    found: list[EdgeWarning] = []
    for p in params:
        if p.name not in best.params:
            continue
        value = best.params[p.name]
        if p.type == "categorical":
            warning = _categorical_edge(p, value)
        else:
            warning = _numeric_edge(p, value, margin)
        if warning:
            found.append(warning)
    return found


def _numeric_edge(param: Param, value: float, margin: float) -> RangeEdge | None:
    if param.max <= param.min:
        return None
    position = range_position(value, param)
    if margin < position < 1 - margin:
        return None
    edge = "low" if position <= margin else "high"
    return RangeEdge(
        param=param.name,
        value=value,
        type=param.type,
        edge=edge,
        range=[param.min, param.max],
        scale="log" if param.log else "linear",
        position=position,
        suggested_range=widened_range(param, edge),
    )


def _categorical_edge(param: Param, value: Any) -> ChoiceEdge | None:
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
    return ChoiceEdge(
        param=param.name,
        value=value,
        type=param.type,
        edge=edge,
        range=list(choices),
        scale="choices",
        position=0.0 if edge == "low" else 1.0,
        suggested_choice=_continue(end, neighbour, steps),
    )


def _continue(end: float, neighbour: float, steps: list[float]) -> float:
    """The next choice beyond ``end``: the arithmetic step when the choices are evenly spaced,
    else geometric."""
    if len({round(s, 12) for s in steps}) == 1 or end <= 0 or neighbour <= 0:
        result = end + (end - neighbour)
    else:
        result = end * (end / neighbour)
    return int(round(result)) if isinstance(end, int) and isinstance(neighbour, int) else result


# --------------------------------------------------------------------------- pruning audit


def epoch_savings(trials: Sequence[FrozenTrial]) -> EpochSavings:
    """Epochs trained (one per intermediate value, every trial) and epochs pruning saved.

    Epochs, not seed-epochs: with fused seeds one epoch trains all of a trial's seeds at
    once, so ``n_seeds`` is not used. ``saved`` sums ``epochs - run`` over PRUNED trials
    (``epochs`` user attr); ``saved_fraction`` is ``saved / (run + saved)``, the share of
    the cost of running every trial to the end.
    """
    from optuna.trial import TrialState

    from lightning_hpo.pruners.records import epochs_of

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
    return EpochSavings(
        run=run,
        saved=saved,
        full=run + saved,
        saved_fraction=saved / (run + saved) if run + saved else None,
        pruned_trials=pruned,
        pruned_without_epochs=unknown,
    )


def prediction_accuracy(complete: Sequence[FrozenTrial]) -> PredictionAccuracy:
    """Stored PFL predictions against the value each completed trial really ended at.

    A prediction at the trial's last step is left out: pruning there saves nothing.
    Buckets go by how far the run was when the prediction was made, ``epoch / epochs``
    (the ``epochs`` user attr, else the trial's own length), and end at 25%, 50%, 75%
    and 100%.
    """
    from lightning_hpo.pruners.records import epochs_of, stored_predictions

    rows: list[tuple[float, float, float | None]] = []  # (progress, error, relative error)
    trials = 0
    for t in complete:
        if not t.intermediate_values:
            continue
        last_step = max(t.intermediate_values)
        epochs = epochs_of(t) or last_step + 1
        made = {
            s: p for s, p in stored_predictions(t).items() if s < last_step and math.isfinite(p)
        }
        trials += bool(made)
        for step, predicted in made.items():
            error = predicted - t.value
            relative = abs(error) / abs(t.value) if t.value else None
            rows.append(((step + 1) / epochs, error, relative))
    buckets = []
    lower = 0.0
    for upper in PROGRESS_EDGES:
        inside = [r for r in rows if lower < r[0] <= upper]
        stats = dataclasses.asdict(_error_stats(inside))
        buckets.append(ProgressBucket(progress=f"{lower:.0%}-{upper:.0%}", upto=upper, **stats))
        lower = upper
    return PredictionAccuracy(
        trials=trials, **dataclasses.asdict(_error_stats(rows)), buckets=buckets
    )


def _error_stats(rows: Sequence[tuple[float, float, float | None]]) -> ErrorStats:
    relative = [r[2] for r in rows if r[2] is not None]
    return ErrorStats(
        predictions=len(rows),
        mean_abs_error=statistics.fmean(abs(r[1]) for r in rows) if rows else None,
        mean_rel_error=statistics.fmean(relative) if relative else None,
        mean_error=statistics.fmean(r[1] for r in rows) if rows else None,
    )
