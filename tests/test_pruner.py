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
from lightning_hpo.pruners.calibration import forecast, levels, probability_below
from lightning_hpo.pruners.curves import noise_level, predict_final_loss
from lightning_hpo.pruners.pfl import PFLPruner
from lightning_hpo.pruners.records import (
    PFLDecision,
    epochs_of,
    like,
    prefix_trial,
    stored_predictions,
    trial_curve,
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


# --------------------------------------------------------------------------- the forecast


def test_levels_are_the_running_median_of_three() -> None:
    assert levels([1.0, 0.9, 0.8, 0.1, 0.8, 0.75, 5.0, 0.7]) == [
        1.0,
        0.95,
        0.9,
        0.8,
        0.8,
        0.75,
        0.8,
        0.75,
    ]
    assert levels([1.0, math.nan, math.inf, 0.5]) == [1.0, 1.0, 1.0, 0.5]
    assert math.isnan(levels([math.nan])[0])


def test_forecast_is_the_neighbours_moves_from_the_same_level() -> None:
    # (level at the epoch, final value), sorted by level: every curve moved by -0.1 except
    # the two far ones.
    refs = sorted([(0.5, 0.4), (0.6, 0.5), (0.7, 0.6), (0.8, 0.7), (3.0, 0.1), (-2.0, 1.0)])
    f = forecast(0.65, refs, k=4)
    assert f.neighbours == 4
    assert f.outcomes == pytest.approx((0.55, 0.55, 0.55, 0.55))
    assert f.center == pytest.approx(0.55)
    assert f.spread == 0.0 and f.width == 0.0
    assert probability_below(f, 0.55) == 1.0 and probability_below(f, 0.54) == 0.0
    # The trial's own noise widens every outcome's kernel: the band never vanishes for a
    # noisy trial, schedule or none.
    noisy = forecast(0.65, refs, k=4, noise=0.05)
    assert noisy.width == pytest.approx(0.05)
    assert 0.0 < probability_below(noisy, 0.5) < 0.5 < probability_below(noisy, 0.6) < 1.0
    # Fewer references than k: all of them; none at all: no forecast.
    assert forecast(0.65, refs, k=50).neighbours == len(refs)
    assert forecast(0.65, [], k=5) is None


def test_forecast_spread_comes_from_how_differently_the_neighbours_moved() -> None:
    refs = sorted((0.5 + 0.01 * i, 0.5 + 0.01 * i + d) for i, d in enumerate([-0.2, 0.0] * 5))
    f = forecast(0.55, refs, k=10)
    assert f.spread > 0.05 and f.width > 0.0
    assert probability_below(f, f.center) == pytest.approx(0.5, abs=0.05)
    assert probability_below(f, f.center - 0.5) < 0.01
    assert probability_below(f, f.center + 0.5) > 0.99


def test_forecast_matches_neighbours_on_more_than_the_level() -> None:
    """Ten references at about the same levels: the falling ones (trend -0.1) fell a
    further 0.2 to their end, the rising ones (overfitting, trend +0.1) rose 0.195. By level alone the
    five nearest mix both; matched on the trend too they are the five of its shape."""
    refs, trends = [], []
    for i in range(5):
        refs += [(0.5 + 0.01 * i, 0.3 + 0.01 * i), (0.5 + 0.01 * i + 0.005, 0.7 + 0.01 * i)]
        trends += [-0.1, 0.1]
    order = sorted(range(10), key=lambda j: refs[j])
    refs, trends = [refs[j] for j in order], [trends[j] for j in order]
    rising = forecast(0.52, refs, k=5, features=[(0.1, trends, 3.0)])
    assert rising.outcomes == pytest.approx((0.715,) * 5)
    falling = forecast(0.52, refs, k=5, features=[(-0.1, trends, 3.0)])
    assert falling.outcomes == pytest.approx((0.32,) * 5)
    by_level = forecast(0.52, refs, k=5)
    assert {round(o, 6) for o in by_level.outcomes} == {0.32, 0.715}
    # A weight of 0, or a trial's trend that is not finite, is the level alone.
    for features in ([(0.1, trends, 0.0)], [(math.nan, trends, 3.0)]):
        assert forecast(0.52, refs, k=5, features=features) == by_level
    # A reference without a finite trend is the farthest.
    missing = [math.nan if t > 0 else t for t in trends]
    assert forecast(0.52, refs, k=5, features=[(0.1, missing, 3.0)]).outcomes == pytest.approx(
        (0.32,) * 5
    )


# --------------------------------------------------------------------------- pruner decisions

N_EPOCHS = 30
SIGNS = {"minimize": 1.0, "maximize": -1.0}
# Twelve completed curves a*exp(-0.1 t) + c, asymptotes 0.30 ... 0.85: top_k=3 puts the
# threshold at 0.40 (+ exp(-3), the finals are at epoch 30).
ASYMPTOTES = [0.30 + 0.05 * i for i in range(12)]
# The rule these tests document (the shipped defaults differ: test_constructor_defaults).
RULE = {
    "n_startup_trials": 5,
    "n_warmup_epochs": 10,
    "warmup_fraction": None,
    "top_k": 3,
    "top_fraction": None,
    "min_probability": 0.05,
    "neighbours": 10,
}


def _jitter(n: int, amplitude: float, seed: int = 0) -> list[float]:
    """Deterministic noise, uniform in [-amplitude, amplitude]."""
    rng = __import__("random").Random(seed)
    return [amplitude * (2 * rng.random() - 1) for _ in range(n)]


def _completed(values: list[float], sign: float, **user_attrs: object) -> FrozenTrial:
    signed = [sign * v for v in values]
    return create_trial(
        value=signed[-1], intermediate_values=dict(enumerate(signed)), user_attrs=user_attrs
    )


def _pruner(**kwargs: object) -> PFLPruner:
    return PFLPruner(**{**RULE, **kwargs})


def _study(
    direction: str, pruner: PFLPruner | None = None, storage: str | None = None, **attrs: object
) -> optuna.Study:
    study = optuna.create_study(direction=direction, pruner=pruner or _pruner(), storage=storage)
    sign = SIGNS[direction]
    study.add_trials(
        _completed(exp_curve(1.0, 0.1, c, N_EPOCHS), sign, **attrs) for c in ASYMPTOTES
    )
    return study


def _run(study: optuna.Study, values: list[float], sign: float, **user_attrs: object) -> int | None:
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


def _decisions(
    study: optuna.Study, values: list[float], pruner: PFLPruner | None = None, **attrs: object
) -> list[PFLDecision]:
    """``evaluate`` after every step of ``values`` as a running trial; nothing is written."""
    sign = SIGNS[study.direction.name.lower()]
    trial = create_trial(
        state=TrialState.RUNNING,
        intermediate_values={i: sign * v for i, v in enumerate(values)},
        user_attrs=attrs,
    )
    pruner = pruner or _pruner()
    return [pruner.evaluate(study, prefix_trial(trial, s)) for s in range(len(values))]


GOOD = exp_curve(1.0, 0.1, 0.2, N_EPOCHS)  # ends below every completed trial
MIDDLING = exp_curve(1.0, 0.1, 0.36, N_EPOCHS)  # among the top 3 at the end
BAD_ASYMPTOTE = exp_curve(1.0, 0.1, 0.8, N_EPOCHS)
HOPELESS = [5.0] * N_EPOCHS


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(
    ("values", "expected"),
    [(GOOD, None), (MIDDLING, None), (BAD_ASYMPTOTE, 10), (HOPELESS, 10)],
    ids=["good", "middling", "bad-asymptote", "hopeless"],
)
def test_decisions(direction: str, values: list[float], expected: int | None) -> None:
    study = _study(direction)
    assert _run(study, values, SIGNS[direction]) == expected


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_non_finite_values_are_pruned_at_once(direction: str) -> None:
    sign = SIGNS[direction]
    for step, bad in ((0, math.inf), (3, math.nan), (20, math.nan)):
        values = list(GOOD)
        values[step] = bad
        assert _run(_study(direction), values, sign) == step


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_forecast_is_the_completed_trials_moves_from_the_same_epoch(direction: str) -> None:
    sign = SIGNS[direction]
    study = _study(direction)
    d = _decisions(study, BAD_ASYMPTOTE)[10]
    # At epoch 11 the trial's level is its median of epochs 9-11, as the references'.
    level = exp_curve(1.0, 0.1, 0.8, 10)[-1]
    assert d.level == pytest.approx(sign * level)
    # Its neighbours (nearest in level at that epoch) are the worst references, each of
    # which fell by exp(-1.0) - exp(-3.0) from there: so will it.
    assert d.neighbours == 10
    assert d.pfl == pytest.approx(sign * (level - math.exp(-1.0) + math.exp(-3.0)))
    assert d.threshold == pytest.approx(sign * (0.40 + math.exp(-3.0)))
    assert d.probability < 1e-6 and (d.prune, d.reason) == (True, "worse")


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_keeps_trials_while_too_few_have_completed(direction: str) -> None:
    sign = SIGNS[direction]
    study = optuna.create_study(direction=direction, pruner=_pruner())
    study.add_trials(_completed(exp_curve(1.0, 0.1, c, N_EPOCHS), sign) for c in ASYMPTOTES[:4])
    for _ in range(4):  # pruned and failed trials do not count
        curve = [sign * v for v in exp_curve(1.0, 0.1, 0.35, 12)]
        study.add_trial(
            create_trial(state=TrialState.PRUNED, intermediate_values=dict(enumerate(curve)))
        )
        study.add_trial(create_trial(state=TrialState.FAIL))
    assert {d.reason for d in _decisions(study, HOPELESS)} == {"startup"}
    assert _run(study, HOPELESS, sign) is None
    assert _run(study, [math.inf] * N_EPOCHS, sign) == 0  # non-finite ignores start-up
    study.add_trial(_completed(exp_curve(1.0, 0.1, 0.5, N_EPOCHS), sign))
    assert _run(study, HOPELESS, sign) == 10


def test_keeps_a_trial_longer_than_the_completed_curves() -> None:
    """Completed runs of 12 epochs say nothing of epoch 15: no reference, kept."""
    study = optuna.create_study(pruner=_pruner())
    study.add_trials(_completed(exp_curve(1.0, 0.1, c, 12), 1.0) for c in ASYMPTOTES)
    decisions = _decisions(study, HOPELESS, _pruner(target_epoch=N_EPOCHS))
    assert [d.reason for d in decisions[10:12]] == ["worse"] * 2
    assert {d.reason for d in decisions[12:]} == {"no-reference"}


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_keeps_a_curve_that_improves_faster_than_any_completed_one(direction: str) -> None:
    """Last at epoch 11 but falling faster than every completed curve did over the same
    epochs: nothing in the study shows where it ends, so it is kept ("unlike")."""
    sign = SIGNS[direction]
    steep = exp_curve(6.0, 0.15, 0.1, N_EPOCHS)
    study = _study(direction)
    d = _decisions(study, steep)[10]
    assert sign * d.level > sign * max(sign * a for a in ASYMPTOTES)  # behind them all
    assert (d.prune, d.reason) == (False, "unlike")
    # The same level, flat: pruned.
    flat = [steep[10]] * N_EPOCHS
    assert _decisions(study, flat)[10].prune


@pytest.mark.parametrize("schedule", [None, {"name": None, "T_max": N_EPOCHS}])
def test_a_noisy_curve_at_a_constant_rate_gets_a_band(schedule: dict | None) -> None:
    """No schedule declared, or a constant one: the band is the trial's own noise and the
    spread of its neighbours' moves, never zero for a noisy curve."""
    attrs = {} if schedule is None else {"lr_schedule": schedule}
    study = _study("minimize", **attrs)
    noisy = [v + e for v, e in zip(exp_curve(1.0, 0.1, 0.5, N_EPOCHS), _jitter(N_EPOCHS, 0.1))]
    decisions = _decisions(study, noisy, **attrs)[10:]
    assert all(d.noise > 0.02 and d.band >= d.noise for d in decisions)
    # Its noise keeps its probability away from 0 and 1 where it is near the threshold.
    assert any(0.01 < d.probability < 0.99 for d in decisions)
    smooth = _decisions(study, exp_curve(1.0, 0.1, 0.5, N_EPOCHS), **attrs)[10:]
    assert all(d.band < 0.01 for d in smooth)


def test_a_noisy_trial_near_the_threshold_is_kept_and_a_hopeless_one_as_noisy_pruned() -> None:
    study = _study("minimize")
    noise = _jitter(N_EPOCHS, 0.15, seed=3)
    near = [v + e for v, e in zip(exp_curve(1.0, 0.1, 0.45, N_EPOCHS), noise)]
    far = [v + 2.0 for v in near]
    assert not any(d.prune for d in _decisions(study, near))
    assert _decisions(study, far)[10].prune


def test_like_with_like_curve_kind_and_schedule() -> None:
    cosine = {"name": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": N_EPOCHS}
    constant = {"name": None, "T_max": N_EPOCHS}
    study = _study("minimize", lr_schedule=cosine, curve="mean of 3 seeds")
    same = _decisions(study, HOPELESS, lr_schedule=cosine, curve="mean of 3 seeds")
    assert same[10].prune
    # Another schedule, or one seed's curve: none of its kind has completed.
    for attrs in (
        {"lr_schedule": constant, "curve": "mean of 3 seeds"},
        {"curve": "mean of 3 seeds"},
        {"lr_schedule": cosine, "curve": "one seed"},
    ):
        assert {d.reason for d in _decisions(study, HOPELESS, **attrs)} == {"startup"}
    trials = study.get_trials()
    probe = create_trial(value=0.0, user_attrs={"lr_schedule": cosine, "curve": "mean of 3 seeds"})
    assert len(like(trials, probe)) == len(ASYMPTOTES)


def test_like_with_like_run_length() -> None:
    # Curves of 5-epoch runs say nothing of where a 30-epoch run ends: no reference for it.
    study = _study("minimize", epochs=5)
    assert {d.reason for d in _decisions(study, HOPELESS, epochs=N_EPOCHS)} == {"startup"}
    assert _decisions(study, HOPELESS, epochs=5)[-1].reason != "startup"


def test_no_startup_keeps_the_first_trial_and_decides_from_the_second() -> None:
    study = optuna.create_study(pruner=_pruner(n_startup_trials=0))
    assert _run(study, HOPELESS, 1.0) is None  # nothing to compare with: kept, no error
    assert _run(study, [v + 10 for v in HOPELESS], 1.0) == 10


def test_top_rank_is_top_k_or_the_fraction_of_finished_trials() -> None:
    assert [PFLPruner(top_k=2, top_fraction=0.1).top_rank(n) for n in (0, 10, 20, 21, 100)] == [
        2,
        2,
        2,
        3,
        10,
    ]
    assert PFLPruner(top_k=3, top_fraction=None).top_rank(1000) == 3
    assert PFLPruner(top_k=1, top_fraction=0.3).top_rank(10) == 3  # 0.3 * 10 is 3, not 4


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_top_fraction_counts_completed_and_pruned_trials_of_the_kind(direction: str) -> None:
    """The threshold is the ceil(top_fraction * finished)-th best completed final, at
    least the top_k-th: pruned trials of the trial's kind count (they ended worse than the
    threshold), failed ones and other kinds do not."""
    sign = SIGNS[direction]
    pruner = _pruner(top_k=1, top_fraction=0.25)
    study = _study(direction, pruner)
    # 12 completed: rank 3, the asymptote 0.40.
    assert _decisions(study, BAD_ASYMPTOTE, pruner)[10].threshold == pytest.approx(
        sign * (0.40 + math.exp(-3.0))
    )
    short = [sign * v for v in exp_curve(1.0, 0.1, 0.9, 12)]
    for _ in range(8):
        study.add_trial(
            create_trial(state=TrialState.PRUNED, intermediate_values=dict(enumerate(short)))
        )
        study.add_trial(create_trial(state=TrialState.FAIL))
        study.add_trial(  # another kind of curve
            create_trial(
                state=TrialState.PRUNED,
                intermediate_values=dict(enumerate(short)),
                user_attrs={"curve": "one seed"},
            )
        )
    # 20 finished of its kind: rank 5, the asymptote 0.50.
    d = _decisions(study, BAD_ASYMPTOTE, pruner)[10]
    assert d.threshold == pytest.approx(sign * (0.50 + math.exp(-3.0)))
    assert (d.prune, d.reason) == (True, "worse")
    # The rank never exceeds the completed trials: the worst of them.
    wide = _pruner(top_k=1, top_fraction=1.0)
    assert _decisions(study, BAD_ASYMPTOTE, wide)[10].threshold == pytest.approx(
        sign * (0.85 + math.exp(-3.0))
    )


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_shape_weight_matches_a_turning_curve_with_curves_that_turned(direction: str) -> None:
    """Six completed curves fell steadily to about 0.33; six others reached the same levels
    at epoch 15 from below, having turned up at epoch 8 (overfitting), and ended near 0.73. A
    running trial that turned up the same way is forecast from the six that turned, and
    pruned; by level alone its neighbours are a mix, and it keeps a real chance."""
    sign = SIGNS[direction]
    steady = [0.3 + 0.6 * math.exp(-0.1 * t) for t in range(N_EPOCHS)]
    at = steady[14]

    def turning(shift: float) -> list[float]:
        # Down to its minimum at epoch 8, then up linearly through `at + shift` at epoch 15.
        low = at + shift - 6 * 0.02
        return [low + 0.05 * (8 - t) if t < 8 else low + 0.02 * (t - 8) for t in range(N_EPOCHS)]

    study = optuna.create_study(direction=direction)
    for i in range(6):
        shift = 0.002 * i
        study.add_trial(_completed([v + shift for v in steady], sign))
        study.add_trial(_completed(turning(shift + 0.001), sign))
    trial = turning(0.0005)
    common = {"top_k": 3, "top_fraction": None, "neighbours": 6, "min_probability": 0.05}
    # At step 15 its level (the median of steps 13-15) is at + 0.0005, between the others'.
    shaped = _decisions(study, trial, _pruner(**common, shape_weight=3.0))[15]
    assert (shaped.prune, shaped.reason) == (True, "worse")
    assert sign * shaped.pfl > 0.7
    flat = _decisions(study, trial, _pruner(**common, shape_weight=0.0))[15]
    assert not flat.prune and 0.1 < flat.probability < 0.9


def test_min_probability_zero_prunes_nothing_finite() -> None:
    decisions = _decisions(_study("minimize"), HOPELESS, _pruner(min_probability=0.0))
    assert not any(d.prune for d in decisions)
    assert {d.reason for d in decisions[10:]} == {"ok"}


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize("n_warmup_epochs", [0, 10, 25])
def test_warmup(direction: str, n_warmup_epochs: int) -> None:
    study = _study(direction, _pruner(n_warmup_epochs=n_warmup_epochs))
    assert _run(study, HOPELESS, SIGNS[direction]) == n_warmup_epochs


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize(("fraction", "epochs"), [(0.2, 20), (0.2, 30), (0.5, 24), (0.33, 30)])
def test_warmup_fraction_follows_the_trials_epochs(
    direction: str, fraction: float, epochs: int
) -> None:
    """A hopeless trial is first pruned just after round(fraction * epochs) epochs, epochs
    being its own ``epochs`` attr (the references' curves are N_EPOCHS long)."""
    study = _study(direction, _pruner(n_warmup_epochs=0, warmup_fraction=fraction))
    first = _run(study, [5.0] * epochs, SIGNS[direction], epochs=epochs)
    assert first == math.floor(fraction * epochs + 0.5)


def test_warmup_fraction_without_an_epochs_attr_follows_the_longest_completed_curve() -> None:
    study = _study("minimize", _pruner(n_warmup_epochs=0, warmup_fraction=0.5))
    assert _run(study, HOPELESS, 1.0) == N_EPOCHS // 2


def test_warmup_is_the_longer_of_the_epochs_and_the_share() -> None:
    pruner = PFLPruner(n_warmup_epochs=4, warmup_fraction=0.1)
    assert [pruner.warmup_epochs(n) for n in (10, 30, 45, 50, 100)] == [4, 4, 5, 5, 10]
    assert PFLPruner(n_warmup_epochs=7).warmup_epochs(100) == 10  # the default share, 0.1
    assert PFLPruner(n_warmup_epochs=7, warmup_fraction=None).warmup_epochs(100) == 7


def test_warmup_fraction_is_derived_from_storage_alone(tmp_path: Path) -> None:
    """A fresh pruner on a reloaded storage reads the run's length from the stored
    ``epochs`` attr: warm-up through round(0.25 * 20) = 5 epochs, then pruned."""
    url = f"sqlite:///{tmp_path / 'warmup.db'}"
    study = _study("minimize", storage=url)
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


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_a_run_no_longer_than_the_warmup_is_decided_at_its_last_epoch(direction: str) -> None:
    sign = SIGNS[direction]
    hopeless = [5.0] * 8
    study = _study(direction)
    assert _run(study, hopeless, sign) is None  # without the epochs attr: all warm-up
    assert _run(study, hopeless, sign, epochs=8) == 7
    assert _run(study, hopeless, sign, epochs=9) is None  # the run is not over at step 7


def test_the_target_is_the_epochs_attr_else_the_longest_completed_curve() -> None:
    study = _study("minimize")
    assert {d.target_epoch for d in _decisions(study, GOOD)[10:]} == {N_EPOCHS}
    assert {d.target_epoch for d in _decisions(study, GOOD, epochs=40)[10:]} == {40}
    assert _decisions(study, GOOD, _pruner(target_epoch=7), epochs=40)[12].target_epoch == 7


def test_multi_objective_is_rejected() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = create_trial(values=[1.0, 2.0], intermediate_values={0: 1.0})
    with pytest.raises(ValueError, match="single-objective"):
        _pruner().prune(study, trial)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
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
        ({"top_fraction": 0}, "top_fraction"),
        ({"top_fraction": 1.5}, "top_fraction"),
        ({"top_fraction": math.nan}, "top_fraction"),
        ({"top_fraction": True}, "top_fraction"),
        ({"top_fraction": "0.1"}, "top_fraction"),
        ({"min_probability": -0.1}, "min_probability"),
        ({"min_probability": 1.0}, "min_probability"),
        ({"min_probability": math.nan}, "min_probability"),
        ({"min_probability": "0.1"}, "min_probability"),
        ({"neighbours": 0}, "neighbours"),
        ({"neighbours": 2.0}, "neighbours"),
        ({"shape_weight": -1.0}, "shape_weight"),
        ({"shape_weight": math.inf}, "shape_weight"),
        ({"shape_weight": "1"}, "shape_weight"),
        ({"target_epoch": 0}, "target_epoch"),
        ({"target_epoch": 2.0}, "target_epoch"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be"):
        PFLPruner(**kwargs)


def test_constructor_defaults() -> None:
    pruner = PFLPruner()
    assert (pruner._n_startup_trials, pruner._n_warmup_epochs, pruner._top_k) == (10, 0, 2)
    assert (pruner._warmup_fraction, pruner._top_fraction) == (0.1, 0.2)
    assert [pruner.warmup_epochs(n) for n in (10, 30, 50)] == [1, 3, 5]
    assert [pruner.top_rank(n) for n in (5, 10, 20, 100, 1000)] == [2, 2, 4, 20, 200]
    assert (pruner._min_probability, pruner._neighbours, pruner._target_epoch) == (0.05, 5, None)
    assert pruner._shape_weight == 3.0


# --------------------------------------------------------------------------- the stored record


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_decisions_are_stored_on_the_trial(direction: str) -> None:
    sign = SIGNS[direction]
    study = _study(direction)
    _run(study, GOOD, sign)
    _run(study, HOPELESS, sign)
    good, hopeless = study.trials[-2:]
    stored = stored_predictions(good)
    assert list(stored) == list(range(10, N_EPOCHS))
    pruner = _pruner()
    for s, predicted in stored.items():
        d = pruner.evaluate(study, prefix_trial(good, s))
        assert predicted == d.pfl
    record = hopeless.user_attrs["pfl"]  # what optuna-dashboard shows
    d = pruner.evaluate(study, prefix_trial(hopeless, 10))
    assert record == {
        "step": 10,
        "decision": "worse",
        "prune": True,
        "predicted": d.pfl,
        "threshold": d.threshold,
        "probability": d.probability,
        "level": sign * 5.0,
        "neighbours": 10,
        "band": d.band,
        "history": [[10, d.pfl]],
    }
    assert record["probability"] < 0.05


def test_a_decision_without_a_forecast_is_stored_as_the_latest() -> None:
    # Forecast at epochs 11-15, then longer than any completed curve: "no-reference" is
    # what the trial's record says last, its predictions so far kept.
    study = _study("minimize")
    longer = GOOD + [GOOD[-1]] * 5
    assert _run(study, longer, 1.0) is None
    record = study.trials[-1].user_attrs["pfl"]
    assert record["decision"] == "no-reference" and record["step"] == len(longer) - 1
    assert record["predicted"] is None
    assert [step for step, _ in record["history"]] == list(range(10, N_EPOCHS))


def test_evaluate_replays_without_writing() -> None:
    study = _study("minimize")
    reference = study.trials[0]
    decisions = [_pruner().evaluate(study, prefix_trial(reference, s)) for s in range(N_EPOCHS)]
    assert [d.reason for d in decisions] == ["warm-up"] * 10 + ["ok"] * 20
    assert stored_predictions(study.trials[0]) == {}


def test_completed_levels_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = pruner_module.levels

    def counting(values: list[float]) -> list[float]:
        calls.append(len(values))
        return real(values)

    monkeypatch.setattr(pruner_module, "levels", counting)
    study = _study("minimize")
    _run(study, GOOD[:20], 1.0)  # decides at steps 10..19, a new epoch each time
    # Once per completed trial (whole curves), and once per decision for the running one.
    assert sorted(calls) == list(range(11, 21)) + [N_EPOCHS] * len(ASYMPTOTES)


# --------------------------------------------------------------------------- persistence


def _sqlite_study(tmp_path: Path) -> tuple[str, optuna.Study]:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = _study("minimize", storage=url)
    noisy = [v + e for v, e in zip(exp_curve(1.0, 0.1, 0.5, 15), _jitter(15, 0.1))]
    for values in (GOOD[:15], HOPELESS[:15], noisy):
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
        decisions.append([d.prune, d.reason, d.pfl, d.threshold, d.probability, d.band])
    return decisions


def test_reloaded_study_decides_as_before(tmp_path: Path) -> None:
    url, study = _sqlite_study(tmp_path)
    before = _running_decisions(study)
    assert [d[0] for d in before] == [False, True, False]
    assert before[2][5] > 0  # the noisy trial's band
    del study

    reloaded = optuna.load_study(study_name=None, storage=url)
    assert _running_decisions(reloaded) == before
    running = reloaded.get_trials(states=(TrialState.RUNNING,))
    assert [list(stored_predictions(t)) for t in running] == [[14], [14], [14]]


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
            out.append([pruner.prune(study, t), d.reason, d.pfl, d.threshold, d.probability,
                        d.band])
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


# --------------------------------------------------------------------------- noise


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
