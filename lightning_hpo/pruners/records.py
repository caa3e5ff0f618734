"""What PFL reads from a trial and writes on it: the trial's curve, its epochs and schedule attrs, the stored decision record (user attr ``pfl``), and the decision itself (``PFLDecision``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from optuna.trial import FrozenTrial

from lightning_hpo.attrs import CURVE_ATTR, EPOCHS_ATTR, LR_SCHEDULE_ATTR, PFL_ATTR
from lightning_hpo.config.validation import is_int
from lightning_hpo.pruners.curves import (
    predict_final_loss,
)


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
    """Those of ``trials`` whose curves are of ``trial``'s kind (``curve_of``): a seed mean
    is never ranked against one seed's curve."""
    kind = curve_of(trial)
    return [t for t in trials if curve_of(t) == kind]


def epochs_of(trial: FrozenTrial) -> int | None:
    """The trial's ``epochs`` attr (a full run's epoch count), or None when absent or invalid."""
    value = trial.user_attrs.get(EPOCHS_ATTR)
    if is_int(value) and value >= 1:
        return value
    return None


def lr_schedule_of(trial: FrozenTrial) -> tuple[str | None, int | None] | None:
    """The trial's ``lr_schedule`` attr as ``(scheduler import path or None, T_max or None)``,
    or None when absent or malformed (the schedule is then unknown)."""
    record = trial.user_attrs.get(LR_SCHEDULE_ATTR)
    if not isinstance(record, dict):
        return None
    name, t_max = record.get("name"), record.get("T_max")
    if name is not None and not isinstance(name, str):
        return None
    return name, (t_max if is_int(t_max) and t_max >= 1 else None)


def trial_pfl(trial: FrozenTrial, target_epoch: int) -> float:
    """:func:`predict_final_loss` of the trial's curve (NaN without intermediate values)."""
    return predict_final_loss(trial_curve(trial), target_epoch)


def stored_predictions(trial: FrozenTrial) -> dict[int, float]:
    """Predictions the pruner stored on ``trial``, step -> PFL, sorted by step."""
    return _predictions(trial.user_attrs.get(PFL_ATTR))


def _predictions(record: Any) -> dict[int, float]:
    history = record.get("history", []) if isinstance(record, dict) else []
    return dict(sorted((int(step), float(pfl)) for step, pfl in history))


def decision_record(decision: PFLDecision, previous: Any = None) -> dict[str, Any]:
    """What :meth:`PFLPruner.prune` stores on the trial (user attr ``pfl``, which
    optuna-dashboard shows): its latest decision, and every prediction so far
    (``previous``: the record stored before)."""
    history = [[step, pfl] for step, pfl in _predictions(previous).items() if step != decision.step]
    history.append([decision.step, decision.pfl])
    return {
        "step": decision.step,
        "decision": decision.reason,
        "prune": decision.prune,
        "predicted": decision.pfl,
        "threshold": decision.threshold,
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
    "worse",
    "overruled",
    "protected",
    "uncertain",
    "ok",
]


@dataclass(frozen=True, kw_only=True)
class PFLDecision:
    """Outcome of :meth:`PFLPruner.evaluate`.

    ``reason`` (:data:`Reason`) is one of ``"no-values"``, ``"non-finite"`` (pruned),
    ``"startup"``, ``"warm-up"``, ``"no-reference"``, ``"worse"`` (pruned: predicted worse
    than the reference set and not protected by the same-epoch rank), ``"overruled"`` (pruned:
    predicted within the reference set but ranked outside ``overrule_quantile`` over the
    same epochs), ``"protected"`` (kept: predicted worse, but ranked within ``quantile``
    over the same epochs), ``"uncertain"`` (kept: the same numbers without the trial's
    uncertainty band would prune it) and ``"ok"`` (kept).

    ``pfl`` is the trial's predicted final value and ``threshold`` the worst prediction
    among the ``top_k`` best completed trials; ``score`` is the trial's best value so far
    (over the running median of three epochs with ``robust_best``), ``protected_bound`` and ``overrule_bound`` the completed trials' best values over as
    many epochs that it is ranked against (None where too few). ``noise`` is the trial's
    noise level (:func:`lightning_hpo.pruners.curves.noise_level`), ``lr_remaining`` the fraction of
    its declared cosine schedule still to anneal (None when unknown) and ``band`` how far
    toward better its ``score`` and ``pfl`` were moved before they were compared:
    ``noise * (noise_band + schedule_band * lr_remaining)``.
    """

    prune: bool
    reason: Reason
    step: int | None = None
    pfl: float | None = None
    threshold: float | None = None
    target_epoch: int | None = None
    score: float | None = None
    protected_bound: float | None = None
    overrule_bound: float | None = None
    noise: float | None = None
    lr_remaining: float | None = None
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
