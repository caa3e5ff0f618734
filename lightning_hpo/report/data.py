"""What a report holds: each part a frozen dataclass. ``Report.to_json()`` gives the strict
JSON object ``tune.py report --json`` prints (field names are its keys, in order).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialSummary:
    """One completed trial in the best / top-k table."""

    number: int
    value: float
    epochs: int
    params: dict[str, Any]
    run_dir: str | None


@dataclass(frozen=True)
class Importances:
    """Parameter importances (normalised to 1), or a message saying why there are none."""

    evaluator: str
    complete_trials: int
    params: dict[str, float] = field(default_factory=dict)
    message: str | None = None


@dataclass(frozen=True)
class EdgeWarning:
    """A parameter whose best value lies at an end of its configured range."""

    param: str
    value: Any
    type: str
    edge: str  # "low" or "high"
    range: list[Any]  # [min, max], or the categorical choices
    scale: str  # "log", "linear" or "choices"
    position: float  # 0 at the low end, 1 at the high end, in the param's own scale


@dataclass(frozen=True)
class RangeEdge(EdgeWarning):
    """A float or int parameter at an end of its range."""

    suggested_range: tuple[float, float] | None = None  # None: nothing to widen


@dataclass(frozen=True)
class ChoiceEdge(EdgeWarning):
    """A categorical parameter at the first or last of its ordered numeric choices."""

    suggested_choice: float | int | None = None


@dataclass(frozen=True)
class EpochSavings:
    """Epochs trained (one per intermediate value) and epochs pruning saved."""

    run: int
    saved: int
    full: int
    saved_fraction: float | None
    pruned_trials: int
    pruned_without_epochs: int


@dataclass(frozen=True)
class ErrorStats:
    """Errors of stored predictions (predicted minus final value)."""

    predictions: int
    mean_abs_error: float | None
    mean_rel_error: float | None
    mean_error: float | None  # > 0: PFL predicts too high


@dataclass(frozen=True)
class ProgressBucket:
    """Prediction errors made while the run was between two fractions of its length."""

    progress: str  # e.g. "25%-50%"
    upto: float
    predictions: int
    mean_abs_error: float | None
    mean_rel_error: float | None
    mean_error: float | None


@dataclass(frozen=True)
class PredictionAccuracy:
    """Stored PFL predictions against the values completed trials ended at."""

    trials: int
    predictions: int
    mean_abs_error: float | None
    mean_rel_error: float | None
    mean_error: float | None
    buckets: list[ProgressBucket]


@dataclass(frozen=True)
class ReplayedTrial:
    """One completed curve replayed through the pruner, and where it would have been cut."""

    number: int
    value: float
    would_prune: bool
    step: int | None = None
    epoch: int | None = None
    reason: str | None = None
    pfl: float | None = None
    threshold: float | None = None
    probability: float | None = None  # of ending at or better than threshold (PFLDecision)
    band: float | None = None  # the forecast's kernel width (PFLDecision.band)


@dataclass(frozen=True)
class Replay:
    """The top completed trials replayed through a pruner: its false prunes."""

    pruner: str
    replayed: int
    would_prune: int
    false_prune_rate: float | None
    trials: list[ReplayedTrial]
    stand_in_for: str | None = None  # the study's pruner, when a PFLPruner replayed for it
    # Whose pruner replayed: "config" (the optimize config given), "study" (the one the
    # study stores), or None (the study stores none: PFLPruner's defaults).
    pruner_from: str | None = None


@dataclass(frozen=True)
class Audit:
    """The pruning audit."""

    epochs: EpochSavings
    predictions: PredictionAccuracy
    replay: Replay


@dataclass(frozen=True)
class Report:
    """Every number of the report. ``storage`` and ``plots`` are filled in by the caller
    (``dataclasses.replace``); ``to_json()`` is the ``--json`` output."""

    storage: str | None = field(default=None, kw_only=True)  # redacted URL
    study: str
    metric: str
    direction: str  # "minimize" or "maximize"
    objective: (
        str  # "last" (a trial's value is its final epoch's metric) or "best" (its best epoch's)
    )
    counts: dict[str, int]  # state name -> trials, and "total"
    best: TrialSummary | None
    top_k: list[TrialSummary]
    importances: Importances
    boundary_warnings: list[EdgeWarning]
    audit: Audit
    plots: dict[str, str] = field(default_factory=dict, kw_only=True)  # name -> PNG path

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values (strict: no NaN or infinity)."""
        return jsonable(dataclasses.asdict(self))


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and non-finite floats as None, so the JSON is strict."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
