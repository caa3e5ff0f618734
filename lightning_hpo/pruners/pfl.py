"""Predicted-Final-Loss (PFL) pruner: its decisions, from what the study stores.

(Longer than 450 lines: most of them this docstring and ``evaluate``'s explained steps.
The rule's parts, reference set and same-epoch bands read one another's state and stay
together; the curve arithmetic is in :mod:`lightning_hpo.pruners.curves`, what a trial
stores in :mod:`lightning_hpo.pruners.records`.)

The pruner extrapolates each learning curve to the end of training
(:func:`lightning_hpo.pruners.curves.predict_final_loss`; the arithmetic lives in
:mod:`lightning_hpo.pruners.curves`) and prunes a running trial whose predicted final value is
worse than the worst prediction among the ``top_k`` best completed trials, provided the
trial's own evidence agrees: its best value so far must also rank outside the best
``quantile`` of the completed trials over the SAME epochs (their curves cut to its
length). The prediction lets a curve that has flattened out at a bad value be stopped
early and lets a slow starter with a good asymptote survive; the same-epoch check keeps
an extrapolation error from cutting a trial that is doing well so far. Conversely, a
trial that ranks outside the best ``overrule_quantile`` over the same epochs is pruned
even when its prediction is within the reference set: that far behind, its extrapolation
is not trusted.

Why both: from early epochs the extrapolation ranks configurations worse than the raw
values do (a cosine schedule's late drop is not exponential, and noisy early curves
extrapolate to implausible values, e.g. a negative cross-entropy), while the completed
trials' predictions sit near their final values. On replayed learning curves
(``benchmarks/bench_pruners.py``) the prediction alone lost the best configuration; gated
by the same-epoch rank but never overruled it trained more epochs than
:class:`optuna.pruners.MedianPruner`; with the overrule it trained fewer epochs than the
median pruner at no more regret on both smooth recorded tasks.

How sure it is: on noisy curves (a high learning rate with small batches, a spike, then
the cosine schedule's late drop) the same rule cut the configuration that ends best, as
the median pruner does. So every comparison first moves the trial's numbers toward better
by its uncertainty band: its own noise level (the spread of its recent epochs around
their local trend), widened while a declared cosine schedule still has decay to come;
and with ``robust_best`` best-so-far values are taken over a running median of three
epochs, so one spike or one lucky dip changes no rank. This is a cheap, storage-derived
stand-in for a predictive distribution of the final value: prune only when beating the
best is unlikely. The defaults are the setting
``benchmarks/bench_pruners.py`` selects over its four recorded tasks; its table reports
every task with the setting chosen on the other three.

Every decision is derived from what the study stores (completed trials, the running
trial's intermediate values and user attrs). The only in-memory state is a cache of
numbers derived from completed trials (their predictions and running best values), which
never change, so several processes sharing one storage, or a study reloaded after a
restart, decide identically. The cache is keyed by study name, trial number and what
was derived, and every entry keeps the trial's final value, which is checked on each
read so that a different study reusing the name is not served stale numbers.

One curve per trial
-------------------
A trial's intermediate values are one learning curve with step = 0-based epoch, as the
stock ``PyTorchLightningPruningCallback`` reports it. A trial of several seeds reports
one value per epoch (the tuner's mean over seeds trained together, or its first seed's
value when they train one after another), so trials compare epoch by epoch whatever
their seeds. The tuner records the run's epoch count in the user attr ``epochs`` (the
pruner's default target epoch), the seeds per trial in ``n_seeds`` (informational) and
the scheduler with its period in ``lr_schedule`` (the schedule term of the band).

Stored predictions
------------------
Each time the pruner predicts a running trial's final value it writes one user attr,
``"pfl"``: its latest decision (step, reason, prediction, threshold) and every
prediction so far, so optuna-dashboard shows it, at one storage write per prediction.
:func:`stored_predictions` reads the predictions back for the report.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lightning_hpo.attrs import PFL_ATTR
from lightning_hpo.config.validation import is_int, is_number
from lightning_hpo.pruners.curves import (
    lr_remaining,
    noise_level,
    predict_final_loss,
    rank_bound,
    robust_running_best,
    running_best,
)
from lightning_hpo.pruners.records import (
    DerivedCache,
    PFLDecision,
    Reason,
    decision_record,
    epochs_of,
    like,
    lr_schedule_of,
    trial_curve,
    trial_pfl,
)

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["PFLPruner"]


def _is_worse(value: float, reference: float, direction: StudyDirection) -> bool:
    if direction == StudyDirection.MAXIMIZE:
        return value < reference
    return value > reference


def _worst(values: Sequence[float], direction: StudyDirection) -> float:
    return min(values) if direction == StudyDirection.MAXIMIZE else max(values)


# --------------------------------------------------------------------------- trial curve


# --------------------------------------------------------------------------- pruner


_final_value = attrgetter("value")


def _check_int(name: str, value: object, minimum: int) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def _check_fraction(name: str, value: object, minimum: float, why: str = "") -> None:
    if not is_number(value) or not minimum <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [{minimum:g}, 1]{why}, got {value!r}.")


class PFLPruner(optuna.pruners.BasePruner):
    """Prune trials predicted to end worse than the top-k completed trials, when their
    best value so far agrees.

    A running trial past start-up and warm-up is ranked two ways against the ``n``
    completed trials:

    * prediction: its predicted final value (:func:`predict_final_loss` of its curve)
      against the worst prediction among the ``top_k`` best completed trials (by final
      value, each predicted from its whole curve);
    * same-epoch evidence: its best value so far against the completed trials' best
      values over the same epochs. It is *protected* while it ranks within the best
      ``max(top_k, ceil(quantile * n))`` of them, and *overruled* once it ranks outside
      the best ``max(top_k, ceil(overrule_quantile * n))``.

    It is pruned when it is predicted worse and not protected (``"worse"``), or when it is
    overruled whatever its prediction (``"overruled"``). Between the two bands the
    prediction decides; a slow starter whose curve points below the reference set
    survives there. Non-finite values are pruned at once.

    How sure it is: before both comparisons, the trial's best so far and its prediction
    move toward better by its uncertainty band, ``noise * (noise_band + schedule_band *
    lr_remaining)``: ``noise`` is the spread of its recent epochs around their trend
    (:func:`lightning_hpo.pruners.curves.noise_level`) and ``lr_remaining`` the fraction of a cosine
    schedule still to anneal (the ``lr_schedule`` attr the tuner records; 0 without one).
    A noisy curve, whose level a high learning rate holds up until the schedule anneals
    it, is kept while its band reaches the reference set (``"uncertain"``); a smooth
    curve's band is about nothing, so a hopeless smooth curve is pruned as before. With
    ``robust_best`` every best-so-far (the trial's and the completed trials') is taken
    over the running median of three epochs, so one lucky dip neither protects a trial
    nor raises the bar for the others, and one spike is never its best.

    Args:
        n_startup_trials: No pruning until this many trials are COMPLETE (pruned and
            failed trials do not count). Default 10.
        n_warmup_epochs: Fewest epochs of warm-up, >= 0: no pruning while the trial has
            reported this many epochs or fewer, unless that is its whole run (its
            ``epochs`` attr); non-finite values are pruned regardless. Default 0 (the
            warm-up is ``warmup_fraction`` of the run alone).
        warmup_fraction: The warm-up as a share of the run, in (0, 1]: no pruning while
            the trial has reported ``round(warmup_fraction * epochs)`` epochs or fewer,
            ``epochs`` being the run's length as the pruner reads it from the storage (the
            target epoch: ``target_epoch``, else the trial's ``epochs`` attr, else the
            longest completed curve). The warm-up is the longer of this and
            ``n_warmup_epochs``, so one setting suits runs of 30 and of 50 epochs alike
            (6 and 10 epochs at 0.2). None: a fixed warm-up of ``n_warmup_epochs``.
            Default 0.2.
        top_k: Size of the reference set: the best completed trials by final value. Also
            the fewest completed trials a running trial is protected among. Default 5.
        target_epoch: Epoch count of a full run. Defaults to the trial's ``epochs``
            attr, else the longest curve among completed trials.
        quantile: Protected fraction of the completed trials, in [0, 1]. Default 0.35.
        overrule_quantile: Fraction beyond which the same-epoch rank prunes whatever the
            prediction, in [quantile, 1]; None never overrules the prediction. Default
            0.5.
        noise_band: Width of the uncertainty band in noise levels, >= 0 (0: none).
            Default 0.
        schedule_band: Extra width, in noise levels, per unit of the learning rate a
            cosine schedule has still to anneal, >= 0 (0: the schedule plays no part).
            Default 4: a noisy curve is given room while its schedule has far to anneal,
            none once it has annealed or without a cosine schedule.
        robust_best: Rank best-so-far values over the running median of three epochs.
            Default True.

    The defaults of ``n_warmup_epochs``, ``warmup_fraction``, ``quantile``,
    ``overrule_quantile``, ``noise_band``, ``schedule_band`` and ``robust_best`` are the
    setting that ``benchmarks/bench_pruners.py`` selects on its four recorded tasks
    together; chosen with one task left out, it is the same setting on three tasks and
    differs on the fourth (see the README's Performance section for the left-out
    figures).

    Raises:
        ValueError: An argument is out of range; the message names it.
    """

    def __init__(
        self,
        n_startup_trials: int = 10,
        n_warmup_epochs: int = 0,
        warmup_fraction: float | None = 0.2,
        top_k: int = 5,
        target_epoch: int | None = None,
        quantile: float = 0.35,
        overrule_quantile: float | None = 0.5,
        noise_band: float = 0.0,
        schedule_band: float = 4.0,
        robust_best: bool = True,
    ) -> None:
        _check_int("n_startup_trials", n_startup_trials, 0)
        _check_int("n_warmup_epochs", n_warmup_epochs, 0)
        if warmup_fraction is not None and (
            not is_number(warmup_fraction) or not 0 < warmup_fraction <= 1
        ):
            raise ValueError(
                f"warmup_fraction must be a number in (0, 1] or None, got {warmup_fraction!r}."
            )
        _check_int("top_k", top_k, 1)
        if target_epoch is not None:
            _check_int("target_epoch", target_epoch, 1)
        _check_fraction("quantile", quantile, 0.0)
        if overrule_quantile is not None:
            why = f" (at least quantile={quantile:g}: set both)" if quantile > 0 else ""
            _check_fraction("overrule_quantile", overrule_quantile, float(quantile), why)
        for name, value in (("noise_band", noise_band), ("schedule_band", schedule_band)):
            if not is_number(value) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if not isinstance(robust_best, bool):
            raise ValueError(f"robust_best must be a bool, got {robust_best!r}.")
        self._n_startup_trials = n_startup_trials
        self._n_warmup_epochs = n_warmup_epochs
        self._warmup_fraction = None if warmup_fraction is None else float(warmup_fraction)
        self._top_k = top_k
        self._target_epoch = target_epoch
        self._quantile = float(quantile)
        self._overrule_quantile = None if overrule_quantile is None else float(overrule_quantile)
        self._noise_band = float(noise_band)
        self._schedule_band = float(schedule_band)
        self._robust_best = robust_best
        self._cache = DerivedCache()

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        decision = self.evaluate(study, trial)
        if decision.pfl is not None:  # one write per prediction, as many as the reports
            # Read back from the storage: the trial Optuna hands a pruner may be a cached copy.
            previous = study._storage.get_trial_user_attrs(trial._trial_id).get(PFL_ATTR)
            study._storage.set_trial_user_attr(
                trial._trial_id, PFL_ATTR, decision_record(decision, previous)
            )
        return decision.prune

    def evaluate(self, study: Study, trial: FrozenTrial) -> PFLDecision:
        """Decide about ``trial`` without writing anything.

        :meth:`prune` is this plus storing the prediction. Replays can call it with
        :func:`prefix_trial` copies; the trial itself is never part of its reference set.

        Raises:
            ValueError: The study has more than one objective.
        """
        directions = study.directions
        if len(directions) > 1:
            raise ValueError("PFLPruner supports single-objective studies only.")
        step = trial.last_step
        if step is None:
            return PFLDecision(prune=False, reason="no-values")
        if not math.isfinite(trial.intermediate_values[step]):
            return PFLDecision(prune=True, reason="non-finite", step=step)
        # Like with like: only completed curves of the running trial's kind (a seed mean, or
        # one seed's), so a study whose space decides whether trials fuse ranks no mixture.
        completed = like(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), trial)
        if len(completed) < self._n_startup_trials:
            return PFLDecision(prune=False, reason="startup", step=step)

        curve = trial_curve(trial)
        epochs = epochs_of(trial)
        target = self._target_for(trial, completed, len(curve))
        # A curve that holds the whole run counts even inside the warm-up, so a run no
        # longer than its warm-up is still decided once, at its last epoch.
        if len(curve) <= self.warmup_epochs(target) and (epochs is None or len(curve) < epochs):
            return PFLDecision(prune=False, reason="warm-up", step=step)

        pfl = self._predict(curve, target)
        if math.isnan(pfl):
            return PFLDecision(prune=True, reason="non-finite", step=step, target_epoch=target)
        direction = directions[0]
        maximize = direction == StudyDirection.MAXIMIZE
        threshold = self._threshold(study.study_name, completed, target, direction, trial)

        # The last value is finite (checked above), so the raw best so far is too; the
        # running median can lack one (a non-finite value among the last three).
        score = running_best(curve, maximize)[-1]
        if self._robust_best:
            robust = robust_running_best(curve, maximize)[-1]
            score = robust if math.isfinite(robust) else score
        scores = self._same_epoch_scores(study.study_name, completed, len(curve), maximize, trial)
        protected = rank_bound(scores, self._quantile, self._top_k)
        overrule = None
        if self._overrule_quantile is not None:
            overrule = rank_bound(scores, self._overrule_quantile, self._top_k)

        noise = noise_level(curve)
        remaining = self._lr_remaining(trial, len(curve), target)
        band = noise * (self._noise_band + self._schedule_band * (remaining or 0.0))
        # The trial's numbers moved toward better by its band, for every comparison below.
        sign = 1.0 if maximize else -1.0
        hopeful_score, hopeful_pfl = score + sign * band, pfl + sign * band

        def decision(prune: bool, reason: Reason) -> PFLDecision:
            return PFLDecision(
                prune=prune,
                reason=reason,
                step=step,
                pfl=pfl,
                threshold=threshold,
                target_epoch=target,
                score=score,
                protected_bound=protected,
                overrule_bound=overrule,
                noise=noise,
                lr_remaining=remaining,
                band=band,
            )

        if threshold is None or protected is None:
            return decision(False, "no-reference")
        reason = self._rule(hopeful_score, hopeful_pfl, threshold, protected, overrule, direction)
        if reason in ("worse", "overruled"):
            return decision(True, reason)
        if band > 0 and self._rule(score, pfl, threshold, protected, overrule, direction) in (
            "worse",
            "overruled",
        ):
            return decision(False, "uncertain")
        return decision(False, reason)

    def warmup_epochs(self, run_epochs: int) -> int:
        """Epochs of warm-up for a run of ``run_epochs`` epochs: ``n_warmup_epochs``, or
        ``warmup_fraction`` of the run (to the nearest epoch, halves up) where longer."""
        if self._warmup_fraction is None:
            return self._n_warmup_epochs
        share = math.floor(self._warmup_fraction * run_epochs + 0.5)
        return max(self._n_warmup_epochs, share)

    @staticmethod
    def _rule(
        score: float,
        pfl: float,
        threshold: float,
        protected: float,
        overrule: float | None,
        direction: StudyDirection,
    ) -> Reason:
        """The decision's reason from the compared numbers: pruned for ``"worse"`` and
        ``"overruled"``, kept for ``"protected"`` and ``"ok"``."""
        predicted_worse = _is_worse(pfl, threshold, direction)
        if not _is_worse(score, protected, direction):
            return "protected" if predicted_worse else "ok"
        if predicted_worse:
            return "worse"
        if overrule is not None and _is_worse(score, overrule, direction):
            return "overruled"
        return "ok"

    def _predict(self, curve: list[float], target: int) -> float:
        """The running trial's predicted final value (a replay's ablation overrides it)."""
        return predict_final_loss(curve, target)

    def _reference_prediction(self, trial: FrozenTrial, target: int) -> float:
        """A completed trial's predicted final value, for the threshold (as :meth:`_predict`)."""
        return trial_pfl(trial, target)

    def _lr_remaining(self, trial: FrozenTrial, epochs_done: int, target: int) -> float | None:
        """:func:`lr_remaining` of the trial's ``lr_schedule`` attr (T_max defaults to the
        target epoch), or None when it has none."""
        schedule = lr_schedule_of(trial)
        if schedule is None:
            return None
        name, t_max = schedule
        return lr_remaining(name, epochs_done, t_max or target)

    def _same_epoch_scores(
        self,
        study_name: str,
        completed: list[FrozenTrial],
        n_epochs: int,
        maximize: bool,
        trial: FrozenTrial,
    ) -> list[float]:
        """Completed trials' best values over their first ``n_epochs`` epochs (all of a
        shorter curve), best first; trials without a finite value there are left out."""
        others = [t for t in completed if t.number != trial.number and t.intermediate_values]
        best_of = robust_running_best if self._robust_best else running_best

        def bests(t: FrozenTrial) -> list[float]:
            curve = trial_curve(t)
            robust = best_of(curve, maximize)
            if not self._robust_best or all(math.isfinite(r) for r in robust):
                return robust
            # Where the running median has no finite value yet, the raw best stands in.
            raw = running_best(curve, maximize)
            return [r if math.isfinite(r) else b for r, b in zip(robust, raw)]

        running_bests = self._cache.lookup(
            study_name, others, ("best", maximize, self._robust_best), bests
        )
        scores = []
        for bests in running_bests:
            score = bests[min(n_epochs, len(bests)) - 1]  # ~1 us per completed trial
            if not math.isinf(score):
                scores.append(score)
        scores.sort(reverse=maximize)
        return scores

    def _target_for(self, trial: FrozenTrial, completed: list[FrozenTrial], length: int) -> int:
        """``target_epoch``, else the trial's ``epochs`` attr, else the longest completed
        curve, else the trial's own ``length``."""
        if self._target_epoch is not None:
            return self._target_epoch
        epochs = epochs_of(trial)
        if epochs is not None:
            return epochs
        longest = max((len(t.intermediate_values) for t in completed), default=0)
        return longest if longest > 0 else length

    def _threshold(
        self,
        study_name: str,
        completed: list[FrozenTrial],
        target: int,
        direction: StudyDirection,
        trial: FrozenTrial,
    ) -> float | None:
        """Worst PFL among the ``top_k`` best completed trials with curves, or None."""
        candidates = [t for t in completed if t.intermediate_values and t.number != trial.number]
        best = heapq.nlargest if direction == StudyDirection.MAXIMIZE else heapq.nsmallest
        references = best(self._top_k, candidates, key=_final_value)
        pfls = self._cache.lookup(
            study_name, references, ("pfl", target), lambda t: self._reference_prediction(t, target)
        )
        pfls = [p for p in pfls if not math.isnan(p)]
        return _worst(pfls, direction) if pfls else None
