"""What PFL reads from a trial and writes on it: the trial's curve, its epochs and schedule attrs, the stored decision record (user attr ``pfl``), and the decision itself (``PFLDecision``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from optuna.trial import FrozenTrial

from lightning_hpo.attrs import CURVE_ATTR, EPOCHS_ATTR, LR_SCHEDULE_ATTR, PFL_ATTR
from lightning_hpo.config.validation import is_int


def trial_curve(trial: FrozenTrial) -> list[float]:
    """The trial's intermediate values ordered by step: its value after each epoch."""
    values = trial.intermediate_values
    return [values[step] for step in sorted(values)]


def curve_of(trial: FrozenTrial) -> str | None:
    """What the trial's intermediate values are (its ``curve`` attr: ``"mean of 3 seeds"``,
    ``"first of 3 seeds"``, ``"one seed"``), or None when it does not say."""
    kind = trial.user_attrs.get(CURVE_ATTR)
    return kind if isinstance(kind, str) else None


def like(trials: list[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    """Those of ``trials`` whose curves are of ``trial``'s kind (``curve_of``), under the
    same declared schedule (the ``lr_schedule`` attr, or none) and for a run of as many
    epochs (the ``epochs`` attr, where both have one: an unknown length is no other
    length): a seed mean is never ranked against one seed's curve, a cosine-annealed curve
    against a constant rate's, nor a 30-epoch run's curve against how a 5-epoch run's
    ended."""
    kind, schedule = curve_of(trial), trial.user_attrs.get(LR_SCHEDULE_ATTR)
    epochs = epochs_of(trial)
    return [
        t
        for t in trials
        if curve_of(t) == kind
        and t.user_attrs.get(LR_SCHEDULE_ATTR) == schedule
        and (epochs is None or epochs_of(t) in (None, epochs))
    ]


def epochs_of(trial: FrozenTrial) -> int | None:
    """The trial's ``epochs`` attr (a full run's epoch count), or None when absent or invalid."""
    value = trial.user_attrs.get(EPOCHS_ATTR)
    if is_int(value) and value >= 1:
        return value
    return None


def stored_predictions(trial: FrozenTrial) -> dict[int, float]:
    """Predictions the pruner stored on ``trial``, step -> PFL, sorted by step."""
    return _predictions(trial.user_attrs.get(PFL_ATTR))


def _predictions(record: Any) -> dict[int, float]:
    history = record.get("history", []) if isinstance(record, dict) else []
    return dict(sorted((int(step), float(pfl)) for step, pfl in history))


def decision_record(decision: PFLDecision, previous: Any = None) -> dict[str, Any]:
    """What :meth:`PFLPruner.prune` stores on the trial (user attr ``pfl``, which
    optuna-dashboard shows): its latest decision past start-up and warm-up, and every
    prediction so far (``previous``: the record stored before)."""
    history = [[step, pfl] for step, pfl in _predictions(previous).items() if step != decision.step]
    if decision.pfl is not None:  # a decision without a forecast ("unlike", "no-reference")
        history.append([decision.step, decision.pfl])
    return {
        "step": decision.step,
        "decision": decision.reason,
        "prune": decision.prune,
        "predicted": decision.pfl,
        "threshold": decision.threshold,
        "probability": decision.probability,
        "level": decision.level,
        "neighbours": decision.neighbours,
        "band": decision.band,
        "history": history,
    }


def prefix_trial(trial: FrozenTrial, last_step: int) -> FrozenTrial:
    """Shallow copy of ``trial`` that has reported only up to ``last_step`` (for replays)."""
    prefix = copy.copy(trial)
    prefix.intermediate_values = {
        step: value for step, value in trial.intermediate_values.items() if step <= last_step
    }
    return prefix


Reason = Literal[
    "no-values",
    "non-finite",
    "startup",
    "warm-up",
    "no-reference",
    "unlike",
    "worse",
    "ok",
]


@dataclass(frozen=True, kw_only=True)
class PFLDecision:
    """Outcome of :meth:`PFLPruner.evaluate`.

    ``reason`` (:data:`Reason`) is one of ``"no-values"``, ``"non-finite"`` (pruned),
    ``"startup"`` (kept: too few completed trials of its kind), ``"warm-up"``,
    ``"no-reference"`` (kept: too few completed curves reach its epoch), ``"unlike"``
    (kept: it improved over its recent epochs by more than any completed curve did over
    the same epochs), ``"worse"`` (pruned: its ``probability`` of ending at or better
    than ``threshold`` is below the pruner's ``min_probability``) and ``"ok"`` (kept).

    In the study's own sign: ``pfl`` is the forecast's median final value, ``threshold``
    the :meth:`PFLPruner.top_rank`-th best completed final value, ``level`` the trial's
    median of its last three values. ``probability`` is the forecast's probability of a final value at or
    better than ``threshold``, drawn from ``neighbours`` completed curves; ``band`` the
    width of each outcome's kernel (the trial's ``noise``, the spread of the curves'
    moves) and ``noise`` the trial's noise level
    (:func:`lightning_hpo.pruners.curves.noise_level`).
    """

    prune: bool
    reason: Reason
    step: int | None = None
    pfl: float | None = None
    threshold: float | None = None
    target_epoch: int | None = None
    level: float | None = None
    probability: float | None = None
    neighbours: int | None = None
    noise: float | None = None
    band: float | None = None


class DerivedCache:
    """Numbers derived from completed trials, which never change once complete.

    An entry is keyed by ``(study name, trial number, what)``, ``what`` naming the
    derivation and its arguments (e.g. ``("pfl", target)``), and keeps the trial's final
    value, which guards against a different study that reuses the name.
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int, tuple], tuple[float | None, Any]] = {}

    def lookup(
        self,
        study_name: str,
        trials: list[FrozenTrial],
        what: tuple,
        derive: Callable[[FrozenTrial], Any],
    ) -> list[Any]:
        """``derive(t)`` for each of ``trials``, computed once per trial and ``what``."""
        entries = self._entries
        out = []
        for t in trials:
            key = (study_name, t.number, what)
            hit = entries.get(key)
            if hit is None or hit[0] != t.value:
                hit = entries[key] = (t.value, derive(t))
            out.append(hit[1])
        return out
