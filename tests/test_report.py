"""`tune.py report`: numbers against the storage, boundary warnings, the pruning audit,
plots, JSON, read-only opening, and TensorBoard's view of every trial's hparams."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from lightning_hpo.cli import report_main
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import run_config_from_dict
from lightning_hpo.config.search_space import Param
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.pruners.pfl import PFLPruner
from lightning_hpo.pruners.records import prefix_trial
from lightning_hpo.report import (
    EDGE_MARGIN,
    boundary_warnings,
    build_report,
    format_text,
    prediction_accuracy,
    replay_top_k,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)

EPOCHS = 5
RUN = {
    "project": "ReportTest",
    "device": "cpu",
    "seeds": [7],
    "epochs": EPOCHS,
    "batch_size": 64,
    "data_config": {"n": 500},
    "net_config": {"nodes": 16, "layers": 2, "activation": "GELU"},
    "checkpoint_config": {"save_best": False, "save_last": False},
}
OPTIMIZE = {
    "study_name": "report_test",
    "trials": 6,
    "seed": 0,
    "sampler": {"name": "optuna.samplers.RandomSampler"},
    "pruner": {
        "name": "lightning_hpo.PFLPruner",
        "kwargs": {
            "n_startup_trials": 2,
            "n_warmup_epochs": 1,
            "top_k": 2,
        },
    },
    "search_space": {
        "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-1, "log": True}},
        "net_config": {"nodes": {"type": "categorical", "choices": [8, 16, 32]}},
    },
}


@dataclass
class Built:
    """A small real study and the files that describe it."""

    root: Path
    run_config: Path
    optimize_config: Path
    url: str
    runs: Path
    study: optuna.Study

    def args(self, *extra: str) -> list[str]:
        return [
            "--run-config",
            str(self.run_config),
            "--optimize-config",
            str(self.optimize_config),
            "--storage",
            self.url,
            "--output",
            str(self.runs),
            *extra,
        ]


def call(argv: list[str]) -> tuple[int, str, str]:
    """``report_main(argv)`` with its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report_main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from lightning_hpo.console import quiet_lightning
    from lightning_hpo.tuning.tuner import TuneOptions, tune

    quiet_lightning()
    root = tmp_path_factory.mktemp("report")
    run_path, opt_path = root / "run.yaml", root / "optimize.yaml"
    dump_yaml(RUN, run_path)
    dump_yaml(OPTIMIZE, opt_path)
    run = run_config_from_dict(RUN, "test")
    opt = optimize_config_from_dict(dict(OPTIMIZE), run, "test")
    url = f"sqlite:///{root / 'study.db'}"
    settings = TuneOptions(storage=url, output=str(root / "runs"), heartbeat=None)
    study = tune(run, opt, settings, echo=lambda line: None)
    return Built(root, run_path, opt_path, url, root / "runs", study)


@pytest.fixture(scope="module")
def report(built: Built) -> dict[str, Any]:
    code, out, _ = call(built.args("--json"))
    assert code == 0
    return json.loads(out)


# --------------------------------------------------------------------------- numbers


def test_counts_match_the_storage(built: Built, report: dict[str, Any]) -> None:
    stored = Counter(t.state.name for t in built.study.get_trials())
    assert {k: v for k, v in report["counts"].items() if k != "total" and v} == dict(stored)
    assert report["counts"]["total"] == len(built.study.trials) == OPTIMIZE["trials"]
    best = built.study.best_trial
    assert report["best"]["number"] == best.number
    assert report["best"]["value"] == pytest.approx(best.value)
    assert report["best"]["run_dir"] == best.user_attrs["run_dir"]
    assert [t["number"] for t in report["top_k"]][0] == best.number


def test_json_has_every_section(report: dict[str, Any]) -> None:
    assert {
        "study",
        "storage",
        "metric",
        "direction",
        "counts",
        "best",
        "top_k",
        "importances",
        "boundary_warnings",
        "audit",
        "plots",
    } <= set(report)
    assert {"epochs", "predictions", "replay"} <= set(report["audit"])
    assert {"number", "value", "epochs", "params", "run_dir"} <= set(report["top_k"][0])
    importances = report["importances"]["params"]
    assert set(importances) == {"optimizer_config_lr", "net_config_nodes"}
    assert sum(importances.values()) == pytest.approx(1.0)
    replay = report["audit"]["replay"]
    assert replay["replayed"] == report["counts"]["COMPLETE"]
    assert replay["pruner"].startswith("PFLPruner(")


def test_importances_are_reproducible(built: Built, report: dict[str, Any]) -> None:
    code, out, _ = call(built.args("--json", "--no-plots"))
    assert code == 0
    assert json.loads(out)["importances"] == report["importances"]


def test_audit_epochs_match_the_intermediate_values(built: Built, report: dict[str, Any]) -> None:
    trials = built.study.get_trials()
    epochs = report["audit"]["epochs"]
    assert epochs["run"] == sum(len(t.intermediate_values) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert epochs["saved"] == sum(EPOCHS - len(t.intermediate_values) for t in pruned)
    assert epochs["pruned_trials"] == len(pruned)
    assert epochs["saved_fraction"] == pytest.approx(
        epochs["saved"] / (epochs["run"] + epochs["saved"])
    )


def test_prediction_errors_use_the_stored_predictions(built: Built, report: dict[str, Any]) -> None:
    from lightning_hpo.pruners.records import stored_predictions

    errors = []
    for t in built.study.get_trials(states=(TrialState.COMPLETE,)):
        last = max(t.intermediate_values)
        errors += [abs(p - t.value) for s, p in stored_predictions(t).items() if s < last]
    predictions = report["audit"]["predictions"]
    assert predictions["predictions"] == len(errors)
    assert sum(b["predictions"] for b in predictions["buckets"]) == len(errors)
    if errors:
        assert predictions["mean_abs_error"] == pytest.approx(sum(errors) / len(errors))


def test_prediction_errors_are_bucketed_by_how_far_the_run_was() -> None:
    trial = create_trial(
        params={},
        distributions={},
        value=0.5,
        intermediate_values={0: 2.0, 1: 1.0, 2: 0.7, 3: 0.5},
        # The pruner's record: the last step's prediction is left out of the errors.
        user_attrs={
            "epochs": 4,
            "n_seeds": 1,
            "pfl": {"step": 3, "decision": "ok", "history": [[0, 1.0], [1, 0.6], [3, 0.9]]},
        },
    )
    result = prediction_accuracy([trial])
    assert result.predictions == 2 and result.trials == 1
    assert result.mean_abs_error == pytest.approx(0.3)
    assert result.mean_rel_error == pytest.approx(0.6)
    assert result.mean_error == pytest.approx(0.3)
    counts = {b.progress: b.predictions for b in result.buckets}
    assert counts == {"0%-25%": 1, "25%-50%": 1, "50%-75%": 0, "75%-100%": 0}


def test_text_report_has_every_section(built: Built) -> None:
    code, out, err = call(built.args("--no-plots", "--top-k", "2"))
    assert code == 0, err
    for heading in (
        "Trials:",
        "Best trial",
        "Top 2 complete trials",
        "Parameter importances",
        "Search-space edges",
        "Pruning audit",
        "replay of the top 2",
    ):
        assert heading in out


# --------------------------------------------------------------------------- plots


def test_plots_are_readable_pngs(built: Built, report: dict[str, Any]) -> None:
    import matplotlib.image

    folder = built.runs / "ReportTest_Opt" / "reports" / "report_test"
    assert set(report["plots"]) == {"history", "curves", "importances", "slice"}
    for name, path in report["plots"].items():
        path = Path(path)
        assert path.parent == folder
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000, name
        image = matplotlib.image.imread(path)
        height, width, channels = image.shape
        assert channels in (3, 4) and height >= 250 and width >= 600, (name, image.shape)
        assert image[..., :3].std() > 0.05, f"{name} is nearly blank"


# --------------------------------------------------------------------------- read-only opening


def test_missing_study_exits_2_and_lists_the_studies(built: Built) -> None:
    before = len(built.study.get_trials())
    code, out, err = call(built.args("--study-name", "no_such_study"))
    assert code == 2 and out == ""
    assert "no_such_study" in err and OPTIMIZE["study_name"] in err
    assert optuna.get_all_study_names(built.url) == [OPTIMIZE["study_name"]]
    assert len(built.study.get_trials()) == before


@pytest.mark.parametrize("scheme", ["sqlite:///", "journal:"])
def test_missing_storage_file_is_never_created(built: Built, tmp_path: Path, scheme: str) -> None:
    path = tmp_path / "sub" / "missing.db"
    argv = built.args("--storage", f"{scheme}{path}")
    code, _, err = call(argv)
    assert code == 2 and "no study file" in err
    assert not path.exists() and not path.parent.exists()


def test_sqlite_file_without_optuna_tables_is_left_untouched(built: Built, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    code, _, err = call(built.args("--storage", f"sqlite:///{empty}"))
    assert code == 2 and "not an Optuna study database" in err
    assert empty.stat().st_size == 0


# --------------------------------------------------------------------------- boundary warnings

LR = Param("optimizer_config", "lr", "float", 1.0e-4, 1.0e-1, log=True)
DROPOUT = Param("net_config", "dropout", "float", 0.0, 1.0)


def best_of(values: dict[str, Any], params: list[Param]) -> optuna.trial.FrozenTrial:
    """A constructed study whose best trial holds ``values`` (no training)."""
    study = optuna.create_study()
    distributions = {p.name: p.distribution() for p in params if p.name in values}
    study.add_trial(create_trial(params=values, distributions=distributions, value=0.1))
    study.add_trial(create_trial(params=values, distributions=distributions, value=0.5))
    return study.best_trial


@pytest.mark.parametrize(
    ("lr", "linear_edge", "edge"),
    [
        (1.05e-4, "low", "low"),  # at the low end in either scale
        (3.0e-3, "low", None),  # 2.9% of the width from min linearly, mid-range (49%) in log space
        (9.0e-2, None, "high"),  # 98.5% of the way in log space, only 90% linearly
        (3.16e-3, "low", None),  # log-space middle
    ],
)
def test_log_range_edges_are_measured_in_log_space(
    lr: float, linear_edge: str | None, edge: str | None
) -> None:
    linear = (lr - LR.min) / (LR.max - LR.min)
    assert linear_edge == (
        "low" if linear <= EDGE_MARGIN else "high" if linear >= 1 - EDGE_MARGIN else None
    )
    found = boundary_warnings(best_of({LR.name: lr}, [LR]), [LR])
    assert [w.edge for w in found] == ([edge] if edge else [])
    if edge:
        assert found[0].scale == "log"
        assert found[0].position == pytest.approx(math.log(lr / LR.min) / math.log(LR.max / LR.min))
    if edge == "low":
        assert found[0].suggested_range == pytest.approx((1.0e-7, 1.0e-1))  # one more log width
    if edge == "high":
        assert found[0].suggested_range == pytest.approx((1.0e-4, 1.0e2))


def test_linear_range_edges_and_zero_floor() -> None:
    high = boundary_warnings(best_of({DROPOUT.name: 0.97}, [DROPOUT]), [DROPOUT])
    assert high[0].edge == "high" and high[0].suggested_range == pytest.approx((0.0, 2.0))
    low = boundary_warnings(best_of({DROPOUT.name: 0.02}, [DROPOUT]), [DROPOUT])
    assert low[0].edge == "low" and low[0].suggested_range is None  # not below 0
    assert boundary_warnings(best_of({DROPOUT.name: 0.5}, [DROPOUT]), [DROPOUT]) == []


def test_categorical_edges_only_for_ordered_numbers() -> None:
    nodes = Param("net_config", "nodes", "categorical", choices=[32, 64, 128])
    found = boundary_warnings(best_of({nodes.name: 128}, [nodes]), [nodes])
    assert found[0].edge == "high" and found[0].suggested_choice == 256
    assert boundary_warnings(best_of({nodes.name: 64}, [nodes]), [nodes]) == []
    names = Param("net_config", "activation", "categorical", choices=["ReLU", "GELU", "Tanh"])
    assert boundary_warnings(best_of({names.name: "Tanh"}, [names]), [names]) == []
    two = Param("net_config", "layers", "categorical", choices=[2, 4])
    assert boundary_warnings(best_of({two.name: 4}, [two]), [two]) == []


def test_report_with_one_complete_trial_is_graceful() -> None:
    run = run_config_from_dict({}, "test")
    opt = optimize_config_from_dict(
        {
            "search_space": {
                "optimizer_config": {
                    "lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}
                }
            }
        },
        run,
        "test",
    )
    study = optuna.create_study()
    study.add_trial(
        create_trial(
            params={"optimizer_config_lr": 1.0e-4},
            distributions={"optimizer_config_lr": FloatDistribution(1.0e-4, 1.0e-2, log=True)},
            value=0.3,
        )
    )
    result = build_report(study, opt)
    assert result.importances.params == {} and "at least 2" in result.importances.message
    assert result.boundary_warnings[0].edge == "low"
    assert result.audit.epochs.run == 0 and result.audit.predictions.predictions == 0


# --------------------------------------------------------------------------- replay


def curve_trial(values: list[float]) -> optuna.trial.FrozenTrial:
    return create_trial(
        params={"x": float(len(values))},
        distributions={"x": FloatDistribution(0.0, 100.0)},
        value=values[-1],
        intermediate_values=dict(enumerate(values)),
        user_attrs={"epochs": len(values), "n_seeds": 1},
    )


def test_replay_counts_false_prunes_of_the_top_trials() -> None:
    # A slow starter that ends best is cut: no completed curve moved as it will.
    study = optuna.create_study()
    study.add_trials(
        [
            curve_trial([5.0, 4.0, 3.0, 0.1]),
            curve_trial([1.0, 0.9, 0.8, 0.7]),
            curve_trial([1.2, 1.0, 0.9, 0.8]),
        ]
    )
    ranked = sorted(study.trials, key=lambda t: t.value)
    replay = replay_top_k(
        ranked, 2, PFLPruner(n_startup_trials=1, n_warmup_epochs=1, top_k=1), study.direction
    )
    # The runner-up's neighbours include the slow starter, whose late drop gives it an even
    # chance of ending best: kept.
    assert replay.replayed == 2 and replay.would_prune == 1 and replay.false_prune_rate == 0.5
    slow, runner_up = replay.trials
    assert slow.number == 0 and slow.epoch == 2 and slow.threshold == 0.7
    # Its level after 2 epochs (4.5) plus how the others moved from there (-0.25, -0.3).
    assert slow.pfl == pytest.approx(4.5 - 0.275)
    assert slow.reason == "worse" and slow.probability < 1e-6
    assert runner_up.number == 1 and not runner_up.would_prune
    # A lenient pruner cuts none of them, and the study itself is never touched.
    lenient = replay_top_k(
        ranked, 3, PFLPruner(n_startup_trials=1, n_warmup_epochs=10, top_k=1), study.direction
    )
    assert lenient.would_prune == 0
    assert all(not t.system_attrs for t in study.trials)


def test_the_replay_counts_pruned_trials_as_the_live_pruner_did() -> None:
    # PFL's rank to beat is a share of the finished trials, pruned ones included: a replay
    # among the completed alone would ask for a far better rank than the pruner did live.
    study = optuna.create_study()
    for i in range(12):
        study.add_trial(curve_trial([0.1 + 0.02 * i + math.exp(-0.2 * e) for e in range(20)]))
    for _ in range(30):
        values = [1.0 + math.exp(-0.2 * e) for e in range(6)]
        study.add_trial(
            create_trial(
                state=TrialState.PRUNED,
                params={"x": 1.0},
                distributions={"x": FloatDistribution(0.0, 100.0)},
                intermediate_values=dict(enumerate(values)),
                user_attrs={"epochs": 20, "n_seeds": 1},
            )
        )
    pruner = PFLPruner()
    ranked = sorted(
        (t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value
    )
    live = sum(
        any(pruner.evaluate(study, prefix_trial(t, step)).prune for step in range(19))
        for t in ranked[:10]
    )
    report = build_report(study, top_k=10)
    assert report.audit.replay.would_prune == live
    assert live < replay_top_k(ranked, 10, pruner, study.direction).would_prune


def test_audit_counts_epochs_of_the_curves_and_names_the_epoch_a_replay_would_prune() -> None:
    run = run_config_from_dict({}, "test")
    space = {
        "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}}
    }
    pruner = {
        "name": "lightning_hpo.PFLPruner",
        "kwargs": {"n_startup_trials": 1, "n_warmup_epochs": 1, "top_k": 1},
    }
    opt = optimize_config_from_dict({"search_space": space, "pruner": pruner}, run, "test")
    study = optuna.create_study()
    study.add_trials(
        [
            curve_trial([5.0, 4.0, 3.0, 0.1]),
            curve_trial([1.0, 0.9, 0.8, 0.7]),
            curve_trial([1.2, 1.0, 0.9, 0.8]),
        ]
    )
    # Pruned after 2 of its 4 epochs; n_seeds does not multiply them. A pruned trial
    # without the epochs attr has no known full length and is left out of "saved".
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            intermediate_values={0: 3.0, 1: 2.9},
            user_attrs={"epochs": 4, "n_seeds": 3},
        )
    )
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={0: 3.0}))
    report = build_report(study, opt, top_k=2)
    epochs = report.audit.epochs
    assert (epochs.run, epochs.saved, epochs.full) == (15, 2, 17)
    assert (epochs.pruned_trials, epochs.pruned_without_epochs) == (1, 1)
    slow = report.audit.replay.trials[0]
    assert (slow.would_prune, slow.step, slow.epoch) == (True, 1, 2)
    text = format_text(dataclasses.replace(report, storage="memory"))
    assert "15 run, 2 saved by pruning 1 trial(s) = 11.8% of 17" in text
    assert "(1 pruned trial(s) lack the epochs user attr and are not counted)" in text
    # band: 1.06 * (1.4826 * 0.025, the moves' robust spread) * 2 ** -0.2 = 0.0342
    assert (
        "    trial 0 (val_loss 0.1) after epoch 2: predicted 4.225, band 0.0342, probability 0.0% "
        "of ending at or better than 0.7" in text
    )


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_reads_every_trials_hparams(built: Built) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    trials = built.study.get_trials()
    assert any(t.state == TrialState.PRUNED for t in trials), (
        "the fixture's study should prune some trials"
    )
    for t in trials:
        folder = Path(t.user_attrs["run_dir"]) / str(RUN["seeds"][0])
        events = EventAccumulator(str(folder))
        events.Reload()
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        ).session_start_info
        assert math.isclose(
            start.hparams["optimizer_config.lr"].number_value,
            t.params["optimizer_config_lr"],
            rel_tol=1e-9,
        ), t.number
        assert start.hparams["net_config.nodes"].number_value == t.params["net_config_nodes"]
