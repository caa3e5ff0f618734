from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import FrozenTrial, TrialState, create_trial

import lightning_hpo.pruners.pfl as pruner_module
from lightning_hpo.pruners.curves import (
    lr_remaining,
    noise_level,
    predict_final_loss,
    rank_bound,
    robust_running_best,
)
from lightning_hpo.pruners.pfl import PFLPruner
from lightning_hpo.pruners.records import (
    PFLDecision,
    epochs_of,
    lr_schedule_of,
    prefix_trial,
    stored_predictions,
    trial_curve,
    trial_pfl,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO_ROOT = Path(__file__).resolve().parents[1]


def exp_curve(a: float, b: float, c: float, n: int) -> list[float]:
    """``a*exp(-b*t) + c`` after epochs ``t = 1..n``."""
    return [a * math.exp(-b * t) + c for t in range(1, n + 1)]


# --------------------------------------------------------------------------- predict_final_loss


@pytest.mark.parametrize("a", [1.0, 5.0, -2.0])
@pytest.mark.parametrize("b", [0.05, 0.1, 0.2, 0.5])
@pytest.mark.parametrize("c", [0.1, 1.0, 0.0, -1.0, -5.0])
def test_noiseless_exponential_is_predicted_within_5_percent(a: float, b: float, c: float) -> None:
    target = 100
    true = a * math.exp(-b * target) + c
    for n in (20, 30, 50, 80, 100, 120):
        values = exp_curve(a, b, c, n)
        # Relative to |true| alone the error explodes when the asymptote is near zero (and
        # losses may be negative); the drop still to come from the first epoch is the scale
        # the pruner ranks trials on, so the tolerance is 5% of the larger of the two.
        scale = max(abs(true), abs(values[0] - true))
        assert abs(predict_final_loss(values, target) - true) <= 0.05 * scale, n


def test_prediction_is_equivariant_under_negation_and_shift() -> None:
    values = exp_curve(2.0, 0.1, 0.3, 40)
    base = predict_final_loss(values, 100)
    assert predict_final_loss([-v for v in values], 100) == pytest.approx(-base)
    assert predict_final_loss([v - 7.0 for v in values], 100) == pytest.approx(base - 7.0)


def test_plateau_predicts_the_plateau() -> None:
    values = [max(0.5, 2.0 - 0.1 * i) for i in range(40)]
    assert predict_final_loss(values, 100) == pytest.approx(0.5, abs=0.01)


def test_rising_curve_keeps_rising_at_less_than_its_slope() -> None:
    values = [1.0 + 0.01 * i for i in range(30)]
    full_slope = 1.0 + 0.01 * 99
    assert values[-1] < predict_final_loss(values, 100) < full_slope


def test_oscillation_stays_within_its_amplitude() -> None:
    for period in (4, 8, 17):
        values = [1.0 + 0.1 * math.sin(2 * math.pi * i / period) for i in range(40)]
        assert abs(predict_final_loss(values, 100) - 1.0) <= 0.1, period


def test_negative_losses() -> None:
    values = exp_curve(3.0, 0.15, -12.0, 30)  # e.g. a negative log-likelihood
    assert predict_final_loss(values, 60) == pytest.approx(3.0 * math.exp(-9.0) - 12.0, abs=0.05)


@pytest.mark.parametrize("level", [3.0, -3.0, 0.0, 1e-300])
def test_constant_curve(level: float) -> None:
    assert predict_final_loss([level] * 50, 100) == level


def test_short_curves_return_last_value() -> None:
    assert predict_final_loss([5.0, 4.0, 3.0], 100) == 3.0
    assert predict_final_loss(exp_curve(1.0, 0.1, 0.0, 9), 100) == exp_curve(1.0, 0.1, 0.0, 9)[-1]


def test_curve_past_target_is_read_at_the_target_epoch() -> None:
    values = [100.0 - i for i in range(100)]  # value at epoch 10 is 91
    assert predict_final_loss(values, 10) == pytest.approx(91.0, abs=0.01)
    assert predict_final_loss(values, 3) == 98.0


def test_empty_and_non_finite_input() -> None:
    assert math.isnan(predict_final_loss([], 10))
    assert math.isnan(predict_final_loss([math.nan, math.inf], 10))
    assert predict_final_loss([1.0, math.nan, 2.0, -math.inf], 10) == 2.0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=200),
    st.integers(min_value=1, max_value=10**6),
)
def test_finite_input_gives_finite_output(values: list[float], target: int) -> None:
    assert math.isfinite(predict_final_loss(values, target))


# --------------------------------------------------------------------------- trial helpers


def test_trial_curve_is_ordered_by_step() -> None:
    values = {4: 5.0, 0: 1.0, 2: 3.0, 1: 2.0, 3: 4.0}
    trial = create_trial(value=0.0, intermediate_values=values)
    assert trial_curve(trial) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert trial_curve(create_trial(value=0.0)) == []


def test_epochs_of_ignores_invalid_attrs() -> None:
    assert epochs_of(create_trial(value=0.0, user_attrs={"epochs": 5})) == 5
    assert epochs_of(create_trial(value=0.0)) is None
    for bad in (0, True, 2.5, "5"):
        trial = create_trial(value=0.0, user_attrs={"epochs": bad})
        assert epochs_of(trial) is None


# --------------------------------------------------------------------------- pruner decisions

REFERENCE_ASYMPTOTES = (0.3, 0.4, 0.5, 0.6, 0.7)  # top 3 -> worst reference PFL ~0.55
N_EPOCHS = 30
# With 5 completed references and top_k=3, quantile=0.5, overrule_quantile=0.65, a trial
# is protected while its best value so far is within the 3rd best of theirs over the same
# epochs (max(3, ceil(2.5))) and overruled outside the 4th best (max(3, ceil(3.25))). At
# step 10 (epoch 11) the references stand at exp(-1.1) + c = 0.633 ... 1.033: protected
# <= 0.833 < band <= 0.933 < overruled.


def _good(n: int = N_EPOCHS) -> list[float]:
    return exp_curve(1.0, 0.1, 0.2, n)


def _with(values: list[float], step: int, value: float) -> list[float]:
    return values[:step] + [value] + values[step + 1 :]


def _overfitting(c: float = 0.3) -> list[float]:
    # Tracks the reference with asymptote c, then the validation loss climbs 0.1 per epoch.
    base = exp_curve(1.0, 0.1, c, N_EPOCHS)
    return [v if i < 15 else base[14] + 0.1 * (i - 14) for i, v in enumerate(base)]


# In the band at step 10 (0.858: outside the protected top 3, within the top 4) and
# heading for ~0.36, below every reference but the best: the prediction keeps it.
SLOW_STARTER = exp_curve(1.4, 0.05, 0.05, N_EPOCHS)
# Heading for ~0.35 too, but last of all at step 10 (1.76): overruled.
FAR_BEHIND_SLOW_STARTER = exp_curve(5.0, 0.1, 0.1, N_EPOCHS)

# name -> (curve, first pruned step or None); n_startup_trials=3, n_warmup_epochs=10,
# top_k=3, quantile=0.5, overrule_quantile=0.65
DECISION_TABLE = {
    "good": (_good(), None),
    "hopeless_constant": ([5.0] * N_EPOCHS, 10),
    "bad_asymptote": (exp_curve(1.0, 0.1, 1.0, N_EPOCHS), 10),
    # Above the protected half at step 10 (a median pruner would stop it) but heading lower.
    "slow_starter": (SLOW_STARTER, None),
    "slow_starter_far_behind": (FAR_BEHIND_SLOW_STARTER, 10),
    # Predicted worse from step 15 on, but its best value so far (step 14's) stays within
    # the protected top 3 at every later epoch (test_guard_* pins the decisions).
    "overfitting_at_the_top": (_overfitting(0.3), None),
    # Predicted worse from step 15 on; protected until its best value so far drops out
    # of the top 3 at step 17.
    "overfitting": (_overfitting(0.45), 17),
    "nan_in_warmup": (_with(_good(), 3, math.nan), 3),
    "inf_first": (_with(_good(), 0, math.inf), 0),
    "nan_late": (_with(_good(), 20, math.nan), 20),
}


def _sign(direction: str) -> float:
    return 1.0 if direction == "minimize" else -1.0


def _completed(values: list[float], sign: float, **user_attrs: int) -> FrozenTrial:
    signed = [sign * v for v in values]
    return create_trial(
        value=signed[-1],
        intermediate_values=dict(enumerate(signed)),
        user_attrs=user_attrs,
    )


def _study(direction: str, pruner: PFLPruner, storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=pruner, storage=storage)
    sign = _sign(direction)
    study.add_trials(
        _completed(exp_curve(1.0, 0.1, c, N_EPOCHS), sign) for c in REFERENCE_ASYMPTOTES
    )
    return study


def _run(study: optuna.Study, values: list[float], sign: float, **user_attrs: int) -> int | None:
    """Report ``values`` like a training loop; the first pruned step, or None."""
    trial = study.ask()
    for key, value in user_attrs.items():
        trial.set_user_attr(key, value)
    for step, value in enumerate(values):
        trial.report(sign * value, step)
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, sign * values[-1])
    return None


# The rule these tables document: a fixed warm-up of 10 epochs, the same-epoch bands at
# 0.5 / 0.65 and no uncertainty band (the shipped defaults differ; test_shipped_defaults_*
# covers them).
RULE = {
    "n_startup_trials": 3,
    "n_warmup_epochs": 10,
    "warmup_fraction": None,
    "top_k": 3,
    "quantile": 0.5,
    "overrule_quantile": 0.65,
    "noise_band": 0.0,
    "schedule_band": 0.0,
    "robust_best": False,
}


def _pruner(**kwargs: object) -> PFLPruner:
    return PFLPruner(**{**RULE, **kwargs})


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize("name", list(DECISION_TABLE))
def test_decision_table(direction: str, name: str) -> None:
    values, expected = DECISION_TABLE[name]
    study = _study(direction, _pruner())
    assert _run(study, values, _sign(direction)) == expected


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize("n_warmup_epochs", [0, 10, 25])
def test_warmup(direction: str, n_warmup_epochs: int) -> None:
    study = _study(direction, _pruner(n_warmup_epochs=n_warmup_epochs))
    assert _run(study, [5.0] * N_EPOCHS, _sign(direction)) == n_warmup_epochs


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(("fraction", "epochs"), [(0.2, 20), (0.2, 30), (0.5, 24), (0.33, 30)])
def test_warmup_fraction_follows_the_trials_epochs(
    direction: str, fraction: float, epochs: int
) -> None:
    """A hopeless trial is first pruned just after round(fraction * epochs) epochs, epochs
    being its own ``epochs`` attr (the references' curves are N_EPOCHS long)."""
    study = _study(direction, _pruner(n_warmup_epochs=0, warmup_fraction=fraction))
    first = _run(study, [5.0] * epochs, _sign(direction), epochs=epochs)
    assert first == math.floor(fraction * epochs + 0.5)


def test_warmup_fraction_without_an_epochs_attr_follows_the_longest_completed_curve() -> None:
    study = _study("minimize", _pruner(n_warmup_epochs=0, warmup_fraction=0.5))
    assert _run(study, [5.0] * N_EPOCHS, 1.0) == N_EPOCHS // 2


def test_warmup_is_the_longer_of_the_epochs_and_the_share() -> None:
    pruner = PFLPruner(n_warmup_epochs=4, warmup_fraction=0.1)
    assert [pruner.warmup_epochs(n) for n in (10, 30, 45, 50, 100)] == [4, 4, 5, 5, 10]
    assert PFLPruner(n_warmup_epochs=7).warmup_epochs(100) == 20  # the default share, 0.2
    assert PFLPruner(n_warmup_epochs=7, warmup_fraction=None).warmup_epochs(100) == 7


def test_warmup_fraction_is_derived_from_storage_alone(tmp_path: Path) -> None:
    """A fresh pruner on a reloaded storage reads the run's length from the stored
    ``epochs`` attr: warm-up through round(0.25 * 20) = 5 epochs, then pruned."""
    url = f"sqlite:///{tmp_path / 'warmup.db'}"
    study = _study("minimize", _pruner(), storage=url)
    trial = study.ask()
    trial.set_user_attr("epochs", 20)
    for step in range(8):
        trial.report(5.0, step)
    reloaded = optuna.load_study(study_name=None, storage=url)
    running = reloaded.get_trials(states=(TrialState.RUNNING,))[0]
    pruner = _pruner(n_warmup_epochs=0, warmup_fraction=0.25)
    reasons = [pruner.evaluate(reloaded, prefix_trial(running, s)).reason for s in range(8)]
    assert reasons[:5] == ["warm-up"] * 5
    assert all(r != "warm-up" for r in reasons[5:])
    assert pruner.evaluate(reloaded, prefix_trial(running, 5)).prune


# --------------------------------------------------------------------------- the same-epoch guard


def _decisions(direction: str, values: list[float], **kwargs: object) -> list[PFLDecision]:
    """``evaluate`` after every step of ``values`` as a running trial; nothing is written."""
    sign = _sign(direction)
    study = _study(direction, _pruner())
    trial = create_trial(
        state=TrialState.RUNNING, intermediate_values={i: sign * v for i, v in enumerate(values)}
    )
    pruner = _pruner(**kwargs)
    return [pruner.evaluate(study, prefix_trial(trial, step)) for step in range(len(values))]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_bounds_are_the_completed_trials_best_values_over_the_same_epochs(direction: str) -> None:
    sign = _sign(direction)
    values = _overfitting(0.45)
    for step, d in enumerate(_decisions(direction, values)[10:], start=10):
        # The running trial's best value so far, against the 3rd and 4th best of the
        # references' best values over the same step + 1 epochs (their curves decrease).
        assert d.score == sign * min(values[: step + 1])
        assert d.protected_bound == pytest.approx(sign * (math.exp(-0.1 * (step + 1)) + 0.5))
        assert d.overrule_bound == pytest.approx(sign * (math.exp(-0.1 * (step + 1)) + 0.6))


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_guard_keeps_a_trial_predicted_worse_while_it_ranks_in_the_protected_fraction(
    direction: str,
) -> None:
    sign = _sign(direction)
    decisions = _decisions(direction, _overfitting(0.3))
    for d in decisions[16:]:
        assert sign * d.pfl > sign * d.threshold  # issue 3's rule alone prunes it at 16
        assert sign * d.score <= sign * d.protected_bound
        assert (d.prune, d.reason) == (False, "protected")
    assert [d.reason for d in decisions[10:16]] == ["ok"] * 6


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_guard_lets_the_prediction_prune_once_the_trial_leaves_the_protected_fraction(
    direction: str,
) -> None:
    sign = _sign(direction)
    decisions = _decisions(direction, _overfitting(0.45))
    assert [d.reason for d in decisions[10:18]] == ["ok"] * 5 + ["protected"] * 2 + ["worse"]
    pruned = decisions[17]
    assert pruned.prune
    assert sign * pruned.pfl > sign * pruned.threshold
    assert sign * pruned.protected_bound < sign * pruned.score <= sign * pruned.overrule_bound


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_prediction_keeps_a_slow_starter_outside_the_protected_fraction(direction: str) -> None:
    sign = _sign(direction)
    decisions = _decisions(direction, SLOW_STARTER)
    band = decisions[10]
    assert sign * band.protected_bound < sign * band.score <= sign * band.overrule_bound
    assert sign * band.pfl <= sign * band.threshold
    assert (band.prune, band.reason) == (False, "ok")
    assert not any(d.prune for d in decisions)
    # Without a band (overrule at the protected fraction) the same-epoch rank prunes it.
    study = _study(direction, _pruner(overrule_quantile=0.5))
    assert _run(study, SLOW_STARTER, sign) == 10


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_overrule_prunes_a_trial_far_behind_whatever_its_prediction(direction: str) -> None:
    sign = _sign(direction)
    overruled = _decisions(direction, FAR_BEHIND_SLOW_STARTER)[10]
    assert sign * overruled.score > sign * overruled.overrule_bound
    assert sign * overruled.pfl <= sign * overruled.threshold  # the prediction would keep it
    assert (overruled.prune, overruled.reason) == (True, "overruled")
    # overrule_quantile=None: beyond the protected fraction the prediction alone decides.
    kept = _decisions(direction, FAR_BEHIND_SLOW_STARTER, overrule_quantile=None)
    assert [d.reason for d in kept[10:]] == ["ok"] * (N_EPOCHS - 10)
    assert all(d.overrule_bound is None for d in kept)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # Protected among the top 4 of 5: the overfitting trial's best so far (0.673)
        # falls behind the 4th reference (exp(-0.1 * t) + 0.6) at step 26.
        ({"quantile": 0.8, "overrule_quantile": 0.8}, 26),
        # top_k is the floor of both fractions: protected among the top 3 as by default.
        ({"quantile": 0.0}, 17),
        ({"quantile": 0.0, "overrule_quantile": 0.0}, 17),
    ],
)
def test_quantile_sets_the_protected_fraction(direction: str, kwargs: dict, expected: int) -> None:
    study = _study(direction, _pruner(**kwargs))
    assert _run(study, _overfitting(0.45), _sign(direction)) == expected


def test_rank_bound() -> None:
    assert rank_bound([float(i) for i in range(100)], 0.55, 1) == 54.0  # 0.55 * 100 > 55 in floats
    scores = [float(i) for i in range(20)]
    assert rank_bound(scores, 0.65, 1) == 12.0  # the 13th
    assert rank_bound(scores, 0.5, 1) == 9.0
    assert rank_bound(scores, 1.0, 1) == 19.0
    assert rank_bound(scores, 0.0, 3) == 2.0  # top_k is the floor
    assert rank_bound(scores, 0.5, 21) is None
    assert rank_bound([], 0.0, 1) is None


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_startup_counts_only_complete_trials(direction: str) -> None:
    sign = _sign(direction)
    study = optuna.create_study(direction=direction, pruner=_pruner())
    study.add_trials(_completed(exp_curve(1.0, 0.1, c, N_EPOCHS), sign) for c in (0.3, 0.4))
    for _ in range(4):
        curve = [sign * v for v in exp_curve(1.0, 0.1, 0.35, 12)]
        study.add_trial(
            create_trial(state=TrialState.PRUNED, intermediate_values=dict(enumerate(curve)))
        )
        study.add_trial(create_trial(state=TrialState.FAIL))
    assert _run(study, [5.0] * N_EPOCHS, sign) is None
    assert _run(study, [math.inf] * N_EPOCHS, sign) == 0  # non-finite ignores startup

    study.add_trial(_completed(exp_curve(1.0, 0.1, 0.5, N_EPOCHS), sign))
    assert _run(study, [5.0] * N_EPOCHS, sign) == 10


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_epochs_attr_is_the_target_and_n_seeds_changes_nothing(direction: str) -> None:
    sign = _sign(direction)
    values = _overfitting(0.45)
    decisions = _decisions(direction, values)  # no attrs: the longest completed curve
    assert {d.target_epoch for d in decisions[10:]} == {N_EPOCHS}
    for n_seeds in (1, 3):
        attrs = {"epochs": 40, "n_seeds": n_seeds}
        running = create_trial(
            state=TrialState.RUNNING,
            intermediate_values={i: sign * v for i, v in enumerate(values)},
            user_attrs=attrs,
        )
        study = _study(direction, _pruner())
        at = [_pruner().evaluate(study, prefix_trial(running, s)) for s in range(N_EPOCHS)]
        assert {d.target_epoch for d in at[10:]} == {40}
        signed = [sign * v for v in values]
        assert [d.pfl for d in at[10:]] == [
            predict_final_loss(signed[: s + 1], 40) for s in range(10, N_EPOCHS)
        ]
        # The same-epoch evidence does not depend on the target.
        assert [(d.score, d.protected_bound) for d in at] == [
            (d.score, d.protected_bound) for d in decisions
        ]
        override = _pruner(target_epoch=7).evaluate(study, running)
        assert override.target_epoch == 7


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_run_no_longer_than_the_warmup_is_decided_at_its_last_epoch(direction: str) -> None:
    sign = _sign(direction)
    hopeless = [5.0] * 8
    study = _study(direction, _pruner())
    assert _run(study, hopeless, sign) is None  # without the epochs attr: all warm-up
    assert _run(study, hopeless, sign, epochs=8) == 7
    assert _run(study, hopeless, sign, epochs=9) is None  # the run is not over at step 7


def test_without_the_epochs_attr_the_target_is_the_longest_completed_curve() -> None:
    study = _study("minimize", _pruner())
    trial = study.ask()
    for step, value in enumerate(_good(12)):
        trial.report(value, step)
    frozen = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))[0]
    assert _pruner().evaluate(study, frozen).target_epoch == N_EPOCHS
    assert _pruner(target_epoch=7).evaluate(study, frozen).target_epoch == 7


def test_multi_objective_is_rejected() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = create_trial(values=[1.0, 2.0], intermediate_values={0: 1.0})
    with pytest.raises(ValueError, match="single-objective"):
        _pruner().prune(study, trial)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"quantile": -0.1}, "quantile"),
        ({"quantile": 1.5}, "quantile"),
        ({"quantile": math.nan}, "quantile"),
        ({"quantile": True}, "quantile"),
        ({"quantile": "0.5"}, "quantile"),
        ({"overrule_quantile": 0.3}, "overrule_quantile"),  # below the default quantile
        ({"quantile": 0.7, "overrule_quantile": 0.65}, "overrule_quantile"),
        ({"overrule_quantile": 1.01}, "overrule_quantile"),
        ({"overrule_quantile": False}, "overrule_quantile"),
        ({"n_startup_trials": -1}, "n_startup_trials"),
        ({"n_startup_trials": 1.5}, "n_startup_trials"),
        ({"n_warmup_epochs": -1}, "n_warmup_epochs"),
        ({"n_warmup_epochs": True}, "n_warmup_epochs"),
        ({"warmup_fraction": 0}, "warmup_fraction"),
        ({"warmup_fraction": -0.1}, "warmup_fraction"),
        ({"warmup_fraction": 1.5}, "warmup_fraction"),
        ({"warmup_fraction": math.nan}, "warmup_fraction"),
        ({"warmup_fraction": True}, "warmup_fraction"),
        ({"warmup_fraction": "0.2"}, "warmup_fraction"),
        ({"top_k": 0}, "top_k"),
        ({"target_epoch": 0}, "target_epoch"),
        ({"target_epoch": 2.0}, "target_epoch"),
        ({"noise_band": -1.0}, "noise_band"),
        ({"noise_band": math.inf}, "noise_band"),
        ({"noise_band": "2"}, "noise_band"),
        ({"schedule_band": math.nan}, "schedule_band"),
        ({"schedule_band": True}, "schedule_band"),
        ({"robust_best": 1}, "robust_best"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be"):
        PFLPruner(**kwargs)


def test_constructor_defaults() -> None:
    pruner = PFLPruner()
    assert (pruner._n_startup_trials, pruner._n_warmup_epochs, pruner._top_k) == (10, 0, 5)
    assert pruner._warmup_fraction == 0.2
    assert [pruner.warmup_epochs(n) for n in (10, 30, 50)] == [2, 6, 10]
    assert (pruner._target_epoch, pruner._quantile, pruner._overrule_quantile) == (None, 0.35, 0.5)
    assert (pruner._noise_band, pruner._schedule_band, pruner._robust_best) == (0.0, 4.0, True)
    assert PFLPruner(quantile=1, overrule_quantile=None)._overrule_quantile is None


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_predictions_are_stored_on_the_trial(direction: str) -> None:
    sign = _sign(direction)
    study = _study(direction, _pruner())
    _run(study, _good(), sign)
    _run(study, [5.0] * N_EPOCHS, sign)
    good, hopeless = study.trials[-2:]

    stored = stored_predictions(good)
    assert list(stored) == list(range(10, N_EPOCHS))
    assert stored[N_EPOCHS - 1] == pytest.approx(sign * (0.2 + math.exp(-3.0)), abs=0.02)
    assert stored == {s: trial_pfl(prefix_trial(good, s), N_EPOCHS) for s in stored}
    assert stored_predictions(hopeless) == {10: sign * 5.0}


def test_evaluate_replays_without_writing() -> None:
    study = _study("minimize", _pruner())
    reference = study.trials[0]
    decisions = [_pruner().evaluate(study, prefix_trial(reference, s)) for s in range(N_EPOCHS)]
    assert [d.reason for d in decisions] == ["warm-up"] * 10 + ["ok"] * 20
    assert stored_predictions(study.trials[0]) == {}


def test_completed_predictions_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = pruner_module.trial_pfl

    def counting(trial: FrozenTrial, target: int) -> float:
        calls.append(trial.number)
        return real(trial, target)

    monkeypatch.setattr(pruner_module, "trial_pfl", counting)
    pruner = _pruner()
    study = _study("minimize", pruner)
    _run(study, _good(12), 1.0)
    assert sorted(calls) == [0, 1, 2]  # the top 3, once, for the single target epoch


def test_completed_running_bests_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = pruner_module.running_best

    def counting(values: list[float], maximize: bool) -> list[float]:
        calls.append(len(values))
        return real(values, maximize)

    monkeypatch.setattr(pruner_module, "running_best", counting)
    study = _study("minimize", _pruner())
    _run(study, _good(20), 1.0)  # decides at steps 10..19, a new epoch each time
    # Once per completed trial (whole curves), and once per decision for the running one.
    assert sorted(calls) == list(range(11, 21)) + [N_EPOCHS] * 5


# --------------------------------------------------------------------------- persistence


def _sqlite_study(tmp_path: Path) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = _study("minimize", _pruner(), storage=url)
    for values in (_good(15), [5.0] * 15):
        trial = study.ask()
        for step, value in enumerate(values):
            trial.report(value, step)
    return url, study


def _running_decisions(study: optuna.Study) -> list[list]:
    pruner = _pruner()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    decisions = []
    for trial in sorted(running, key=lambda t: t.number):
        d = pruner.evaluate(study, trial)
        assert pruner.prune(study, trial) == d.prune
        decisions.append(
            [d.prune, d.reason, d.pfl, d.threshold, d.target_epoch, d.score, d.protected_bound]
        )
    return decisions


def test_reloaded_study_decides_as_before(tmp_path: Path) -> None:
    url, study = _sqlite_study(tmp_path)
    before = _running_decisions(study)
    assert [d[0] for d in before] == [False, True]
    del study

    reloaded = optuna.load_study(study_name=None, storage=url)
    assert _running_decisions(reloaded) == before
    running = reloaded.get_trials(states=(TrialState.RUNNING,))
    assert [list(stored_predictions(t)) for t in running] == [[14], [14]]


def test_two_processes_on_one_storage_agree(tmp_path: Path) -> None:
    url, study = _sqlite_study(tmp_path)
    here = _running_decisions(study)
    script = textwrap.dedent(
        f"""
        import json, optuna
        from optuna.trial import TrialState
        from lightning_hpo.pruners.pfl import PFLPruner
        study = optuna.load_study(study_name=None, storage={url!r})
        pruner = PFLPruner(**{RULE!r})
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        out = []
        for t in sorted(running, key=lambda t: t.number):
            d = pruner.evaluate(study, t)
            out.append([pruner.prune(study, t), d.reason, d.pfl, d.threshold, d.target_epoch,
                        d.score, d.protected_bound])
        print(json.dumps(out))
        """
    )
    pythonpath = os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == here


# --------------------------------------------------------------------------- Lightning


def _fit_regressor(trial: optuna.Trial, lr: float, bias: float, max_epochs: int) -> float:
    import lightning.pytorch as pl
    import torch
    from optuna_integration import PyTorchLightningPruningCallback
    from torch.utils.data import DataLoader, TensorDataset

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(1, 1)
            torch.nn.init.constant_(self.linear.bias, bias)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.linear(x), y)

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.linear(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=lr)

    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    data = TensorDataset(x, 3 * x)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[PyTorchLightningPruningCallback(trial, monitor="val_loss")],
    )
    trainer.fit(
        Regressor(),
        DataLoader(data, batch_size=16, shuffle=True),
        DataLoader(data, batch_size=64),
    )
    return trainer.callback_metrics["val_loss"].item()


def test_lightning_callback_prunes_hopeless_and_keeps_good() -> None:
    pytest.importorskip("lightning")
    epochs = 12
    study = optuna.create_study(
        pruner=PFLPruner(n_startup_trials=3, n_warmup_epochs=2, top_k=3, target_epoch=epochs)
    )
    study.add_trials(_completed(exp_curve(2.0, 0.3, c, epochs), 1.0) for c in (0.5, 0.6, 0.7))
    study.enqueue_trial({"kind": "hopeless"})
    study.enqueue_trial({"kind": "good"})

    def objective(trial: optuna.Trial) -> float:
        kind = trial.suggest_categorical("kind", ["hopeless", "good"])
        lr, bias = (0.0, 100.0) if kind == "hopeless" else (0.5, 0.0)
        return _fit_regressor(trial, lr, bias, epochs)

    study.optimize(objective, n_trials=2)
    hopeless, good = study.trials[-2:]
    assert hopeless.state == TrialState.PRUNED
    assert hopeless.last_step == 2
    assert good.state == TrialState.COMPLETE
    assert good.value < 0.1
    assert list(stored_predictions(good)) == list(range(2, epochs))


def test_raising_quantile_alone_says_to_raise_overrule_quantile_too() -> None:
    with pytest.raises(ValueError, match=r"overrule_quantile .*at least quantile=0.8: set both"):
        PFLPruner(quantile=0.8)
    assert PFLPruner(quantile=0.8, overrule_quantile=0.9)._overrule_quantile == 0.9


# --------------------------------------------------------------------------- how sure it is


def _jitter(n: int, amplitude: float, seed: int = 0) -> list[float]:
    """Deterministic noise, uniform in [-amplitude, amplitude]."""
    rng = __import__("random").Random(seed)
    return [amplitude * (2 * rng.random() - 1) for _ in range(n)]


def test_noise_level_of_a_smooth_curve_is_its_curvature_only() -> None:
    assert noise_level([0.5] * 20) == 0.0
    assert noise_level([1.0 - 0.01 * t for t in range(20)]) == pytest.approx(0.0, abs=1e-12)
    assert noise_level(exp_curve(1.0, 0.1, 0.2, 30)) < 0.002
    assert noise_level([]) == noise_level([1.0, 2.0]) == 0.0


def test_noise_level_measures_independent_noise_and_shrugs_off_one_spike() -> None:
    sigma = 0.05
    rng = __import__("random").Random(1)
    noisy = [0.5 + rng.gauss(0, sigma) for _ in range(400)]
    assert noise_level(noisy, window=400) == pytest.approx(sigma, rel=0.2)
    window = noisy[-10:]
    spiked = window[:5] + [window[5] * 8] + window[6:]
    # One spike moves two of the eight residuals' ranks, not their median by much.
    assert noise_level(spiked) < 2.5 * noise_level(window) + 1e-9
    # The window is the last `window` finite values.
    assert noise_level([100.0, -100.0, 100.0] + [0.5] * 10) == 0.0
    assert noise_level([0.5] * 10 + [math.nan, math.inf]) == 0.0


@pytest.mark.parametrize("maximize", [False, True])
def test_robust_running_best_ignores_a_single_dip_and_spike(maximize: bool) -> None:
    sign = -1.0 if maximize else 1.0
    values = [sign * v for v in [1.0, 0.9, 0.8, 0.1, 0.8, 0.75, 5.0, 0.7, 0.7]]
    robust = [sign * v for v in robust_running_best(values, maximize)]
    # The lucky dip at index 3 and the spike at 6 are never a median of three.
    assert robust == [1.0, 0.9, 0.9, 0.8, 0.8, 0.75, 0.75, 0.75, 0.7]
    # A window with fewer than three finite values has no median: the best stays.
    gappy = [sign * v for v in [1.0, math.nan, math.nan, 0.5]]
    assert robust_running_best(gappy, maximize) == [sign * 1.0] * 4


def test_lr_remaining() -> None:
    cosine = "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert lr_remaining(cosine, 0, 30) == 1.0
    assert lr_remaining(cosine, 15, 30) == pytest.approx(0.5)
    assert lr_remaining("CosineAnnealingLR", 30, 30) == pytest.approx(0.0)
    assert lr_remaining(cosine, 45, 30) == pytest.approx(0.0)  # past T_max it stays annealed
    assert lr_remaining(None, 5, 30) == 0.0  # a constant rate has nothing left to anneal
    assert lr_remaining("torch.optim.lr_scheduler.StepLR", 5, 30) is None


def test_lr_schedule_of() -> None:
    cosine = "torch.optim.lr_scheduler.CosineAnnealingLR"
    attrs = {"lr_schedule": {"name": cosine, "T_max": 40}}
    assert lr_schedule_of(create_trial(value=0.0, user_attrs=attrs)) == (cosine, 40)
    no_scheduler = {"lr_schedule": {"name": None, "T_max": 40}}
    assert lr_schedule_of(create_trial(value=0.0, user_attrs=no_scheduler)) == (None, 40)
    for bad in ({"name": 3}, "cosine", None):
        assert lr_schedule_of(create_trial(value=0.0, user_attrs={"lr_schedule": bad})) is None
    bad_t_max = {"lr_schedule": {"name": cosine, "T_max": 0}}
    assert lr_schedule_of(create_trial(value=0.0, user_attrs=bad_t_max)) == (cosine, None)


COSINE = {"name": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": N_EPOCHS}


def _late_bloomer() -> list[float]:
    """A high learning rate's curve under a cosine schedule: its level follows the rate
    (0.1 + 1.3 * the fraction still to anneal), noisy (+-0.12), with a spike of about
    four times its level at step 12; it ends at ~0.1-0.2, below every reference."""
    noise = _jitter(N_EPOCHS, 0.12)
    values = [
        0.1 + 1.3 * lr_remaining("CosineAnnealingLR", t, N_EPOCHS) + noise[t - 1]
        for t in range(1, N_EPOCHS + 1)
    ]
    values[12] = 4.0
    return values


BAND = {"noise_band": 2.0, "schedule_band": 4.0, "robust_best": True}


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_noisy_late_bloomer_with_a_spike_is_kept_by_its_band(direction: str) -> None:
    sign = _sign(direction)
    bloomer = _late_bloomer()
    assert bloomer[-1] < min(REFERENCE_ASYMPTOTES)  # it would end best of all
    # Without a band, behind the references at step 10 and predicted worse: pruned.
    study = _study(direction, _pruner())
    assert _run(study, bloomer, sign, epochs=N_EPOCHS) == 10
    study = _study(direction, _pruner(**BAND))
    trial = study.ask()
    trial.set_user_attr("epochs", N_EPOCHS)
    trial.set_user_attr("lr_schedule", COSINE)
    for step, value in enumerate(bloomer):
        trial.report(sign * value, step)
        assert not trial.should_prune(), step
    assert list(stored_predictions(study.trials[-1])) == list(range(10, N_EPOCHS))
    record = study.trials[-1].user_attrs["pfl"]  # what optuna-dashboard shows
    assert record["step"] == N_EPOCHS - 1 and record["band"] > 0
    # Its band is what kept it at step 10: the same numbers without it prune.
    d = _pruner(**BAND).evaluate(study, prefix_trial(study.trials[-1], 10))
    assert (d.prune, d.reason) == (False, "uncertain")
    assert d.band == pytest.approx(d.noise * (2.0 + 4.0 * d.lr_remaining))
    assert d.lr_remaining == pytest.approx(lr_remaining("CosineAnnealingLR", 11, N_EPOCHS))
    assert d.noise > 0.03


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(
    "values",
    [
        [5.0] * N_EPOCHS,  # hopeless and smooth: no band at all
        [5.0 + v for v in _jitter(N_EPOCHS, 0.12)],  # hopeless and as noisy as the bloomer
        # Cosine-shaped and smooth, heading for 3.0: a smooth curve earns no schedule credit.
        [3.0 + r for r in [lr_remaining("CosineAnnealingLR", t, 30) for t in range(1, 31)]],
    ],
    ids=["smooth", "noisy", "smooth-cosine"],
)
def test_a_hopeless_curve_is_still_pruned_at_the_warm_up_with_the_band(
    direction: str, values: list[float]
) -> None:
    sign = _sign(direction)
    study = _study(direction, _pruner(**BAND))
    assert _run(study, values, sign, epochs=N_EPOCHS, lr_schedule=COSINE) == 10


def test_the_band_is_derived_from_storage_alone(tmp_path: Path) -> None:
    """Two pruners, one on a reloaded storage, decide the bloomer identically, band included."""
    url = f"sqlite:///{tmp_path / 'band.db'}"
    study = _study("minimize", _pruner(**BAND), storage=url)
    trial = study.ask()
    trial.set_user_attr("epochs", N_EPOCHS)
    trial.set_user_attr("lr_schedule", COSINE)
    for step, value in enumerate(_late_bloomer()[:15]):
        trial.report(value, step)
    first = [_pruner(**BAND).evaluate(study, prefix_trial(study.trials[-1], s)) for s in range(15)]
    reloaded = optuna.load_study(study_name=None, storage=url)
    running = reloaded.get_trials(states=(TrialState.RUNNING,))[0]
    again = [_pruner(**BAND).evaluate(reloaded, prefix_trial(running, s)) for s in range(15)]
    assert again == first
    assert {d.reason for d in first[10:]} == {"uncertain"}


def test_shipped_defaults_keep_a_noisy_trial_whose_band_reaches_the_protected_set() -> None:
    """PFLPruner() itself, 12 smooth references, a trial under a cosine schedule: a trend
    just outside the overrule bound at step 10 is pruned; the same trend with +-0.15 noise
    is kept ("uncertain": the schedule still has far to anneal), and a hopeless one as
    noisy is still pruned. Without a cosine schedule the defaults give no band at all
    (noise_band=0), so the noisy trend is pruned too."""
    study = optuna.create_study()
    study.add_trials(
        _completed(exp_curve(1.0, 0.1, 0.30 + 0.05 * i, N_EPOCHS), 1.0) for i in range(12)
    )
    trend = exp_curve(1.0, 0.1, 0.6, N_EPOCHS)
    noise = _jitter(N_EPOCHS, 0.15, seed=3)

    def at_step_10(values: list[float], schedule: dict | None = COSINE) -> PFLDecision:
        attrs: dict = {"epochs": N_EPOCHS}
        if schedule is not None:
            attrs["lr_schedule"] = schedule
        trial = create_trial(
            state=TrialState.RUNNING, intermediate_values=dict(enumerate(values)), user_attrs=attrs
        )
        return PFLPruner().evaluate(study, prefix_trial(trial, 10))

    smooth = at_step_10(trend)
    assert (smooth.prune, smooth.reason) == (True, "worse")
    assert smooth.score > smooth.overrule_bound and smooth.band < 0.01
    noisy = at_step_10([v + e for v, e in zip(trend, noise)])
    assert (noisy.prune, noisy.reason) == (False, "uncertain")
    assert noisy.score - noisy.band <= noisy.protected_bound < noisy.score
    assert noisy.band == pytest.approx(noisy.noise * 4.0 * noisy.lr_remaining)
    hopeless = at_step_10([v + 2.0 + e for v, e in zip(trend, noise)])
    assert (hopeless.prune, hopeless.reason) == (True, "worse")
    unscheduled = at_step_10([v + e for v, e in zip(trend, noise)], schedule=None)
    assert unscheduled.prune and unscheduled.band == 0.0
