"""The Python API: ``lightning_hpo.train`` and ``lightning_hpo.tune`` from a mapping or a
file, the command line's checks and preflight, one-line ConfigErrors, and nothing
process-wide left behind."""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path

import lightning.pytorch  # noqa: F401 - its import sets its own loggers: before any state is taken
import optuna
import pytest
from optuna.trial import TrialState

import lightning_hpo
from lightning_hpo.config.yamlio import dump_yaml

RUN = {
    "project": "Api",
    "device": "cpu",
    "seeds": [1, 2],
    "epochs": 2,
    "batch_size": 128,
    "data_config": {"n": 300},
    "net_config": {"nodes": 8, "layers": 1},
}
OPTIMIZE = {
    "study_name": "api",
    "trials": 2,
    "seed": 1,
    "pruner": None,
    "search_space": {"optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-2}}},
}


def process_state() -> tuple:
    return (
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
        gc.get_freeze_count(),
        logging.getLogger("lightning.pytorch").level,
        optuna.logging.get_verbosity(),
    )


def test_train_from_a_mapping_returns_each_seed_s_result(tmp_path: Path) -> None:
    before = process_state()
    result = lightning_hpo.train(RUN, output=tmp_path / "runs")
    assert [r.seed for r in result.results] == [1, 2]
    assert all(len(r.history) == 2 for r in result.results)
    assert (result.results[0].run_dir / "checkpoints" / "best.ckpt").is_file()
    assert process_state() == before


def test_tune_from_files_returns_the_study_and_writes_best_yaml(tmp_path: Path, capsys) -> None:
    dump_yaml(RUN, tmp_path / "run.yaml")
    dump_yaml(OPTIMIZE, tmp_path / "optimize.yaml")
    before = process_state()
    study = lightning_hpo.tune(
        tmp_path / "run.yaml",
        str(tmp_path / "optimize.yaml"),
        storage=f"sqlite:///{tmp_path}/s.db",
        output=tmp_path / "runs",
        trials=3,
    )
    assert isinstance(study, optuna.Study)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert (tmp_path / "runs" / "Api_Opt" / "api" / "best.yaml").is_file()
    out = capsys.readouterr().out
    assert "[3/3] trial 2 val_loss" in out and "Best trial:" in out
    assert process_state() == before


def test_a_bad_value_raises_the_command_line_s_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(lightning_hpo.ConfigError) as info:
        lightning_hpo.tune(RUN | {"epochs": 0}, OPTIMIZE, output=tmp_path)
    assert (
        str(info.value)
        == "<run config>: epochs: must be > 0, got 0; set epochs to a positive integer"
    )
    with pytest.raises(lightning_hpo.ConfigError, match="optimizer_config.lr: AdamW rejected"):
        lightning_hpo.train(RUN | {"optimizer_config": {"lr": "fast"}}, output=tmp_path)
    assert not list(tmp_path.iterdir())  # the preflight refused it before anything was written


def test_an_unknown_option_names_the_nearest_one() -> None:
    with pytest.raises(
        lightning_hpo.ConfigError,
        match="lightning_hpo.tune: studyname: unknown option; did you mean 'study_name'",
    ):
        lightning_hpo.tune(RUN, OPTIMIZE, studyname="x")


def test_the_public_api_is_listed() -> None:
    assert set(lightning_hpo.__all__) >= {
        "train",
        "tune",
        "load_run",
        "PFLPruner",
        "RunConfig",
        "OptimizeConfig",
        "ConfigError",
    }
    for name in lightning_hpo.__all__:
        assert getattr(lightning_hpo, name) is not None
