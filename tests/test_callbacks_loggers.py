"""The run config's ``callbacks`` and ``loggers`` (``{class_path, init_args}`` entries): checked
when the config loads, built for every Trainer, each logger writing every seed's own run
(fused seeds included) into the run's folder, offline."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from lightning_hpo.config.class_paths import shareable
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.runs import check_fusion, train

pytestmark = pytest.mark.usefixtures("quiet")

CSV = {"class_path": "lightning.pytorch.loggers.CSVLogger"}
TENSORBOARD = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}
LR_MONITOR = {
    "class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
    "init_args": {"logging_interval": "epoch"},
}


def _csv_column(path: Path, column: str) -> list[float]:
    with open(path) as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def test_fused_seeds_get_a_csv_and_a_tensorboard_run_each_and_callbacks_run(
    small_config, tmp_path: Path
) -> None:
    cfg = small_config(seeds=[1, 2], epochs=3, callbacks=[LR_MONITOR], loggers=[CSV, TENSORBOARD])
    result = train(cfg, tmp_path)
    assert [r.together for r in result.results] == [2, 2]
    for r in result.results:
        assert _csv_column(r.run_dir / "metrics.csv", "val_loss") == pytest.approx(r.history)
        assert len(_csv_column(r.run_dir / "metrics.csv", "lr-AdamW")) == 3  # the callback's
        assert list(r.run_dir.glob("events.out.tfevents.*"))
    mean = result.results[0].run_dir.parent / "mean"
    means = [(a + b) / 2 for a, b in zip(*(r.history for r in result.results))]
    assert _csv_column(mean / "metrics.csv", "val_loss") == pytest.approx(means, rel=1e-5)


def test_without_loggers_tensorboard_is_the_only_logger(small_config, tmp_path: Path) -> None:
    (r,) = train(small_config(), tmp_path).results
    assert list(r.run_dir.glob("events.out.tfevents.*"))
    assert not (r.run_dir / "metrics.csv").exists()


def test_mlflow_gives_every_seed_and_the_mean_a_run_in_a_local_store(
    small_config, tmp_path: Path
) -> None:
    pytest.importorskip("mlflow")
    cfg = small_config(
        seeds=[1, 2], loggers=[{"class_path": "lightning.pytorch.loggers.MLFlowLogger"}]
    )
    result = train(cfg, tmp_path)
    group = result.results[0].run_dir.parent
    db = sqlite3.connect(group / "mlflow.db")
    runs = dict(db.execute("select name, run_uuid from runs").fetchall())
    assert sorted(runs) == sorted(f"{group.name}/{s}" for s in ("1", "2", "mean"))
    for r in result.results:
        rows = db.execute(
            "select value from metrics where run_uuid = ? and key = 'val_loss' order by step",
            (runs[f"{group.name}/{r.seed}"],),
        ).fetchall()
        assert [v for (v,) in rows] == pytest.approx(r.history)
    (experiment,) = db.execute("select name from experiments where name != 'Default'").fetchall()
    assert experiment == (cfg.project,)


def test_wandb_offline_gives_each_seed_its_own_run_seed_after_seed(
    small_config, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"offline": True}}
    cfg = small_config(seeds=[1, 2], loggers=[wandb])
    result = train(cfg, tmp_path)
    assert [r.together for r in result.results] == [1, 1]  # W&B: one run per process at a time
    runs = [list((r.run_dir / "wandb").glob("offline-run-*/run-*.wandb")) for r in result.results]
    assert all(len(files) == 1 for files in runs) and runs[0][0].name != runs[1][0].name
    with pytest.raises(ConfigError, match="one W&B run"):
        check_fusion(small_config(seeds=[1, 2], loggers=[wandb], fuse_seeds=True))


@pytest.mark.parametrize(
    ("entries", "key", "text"),
    [
        ({"callbacks": {"class_path": "x"}}, "callbacks", "expected a list"),
        ({"callbacks": ["lightning.pytorch.callbacks.LearningRateMonitor"]}, "callbacks[0]", "expected a mapping"),
        ({"callbacks": [{"init_args": {}}]}, "callbacks[0].class_path", "expected an import path"),
        ({"loggers": [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_arg": {}}]}, "loggers[0].init_arg", "did you mean 'init_args'"),
        ({"callbacks": [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitr"}]}, "callbacks[0].class_path", "did you mean"),
        ({"callbacks": [{"class_path": "lightning.pytorch.loggers.CSVLogger"}]}, "callbacks[0].class_path", "is not a lightning.pytorch.callbacks.Callback subclass"),
        ({"loggers": [LR_MONITOR]}, "loggers[0].class_path", "is not a lightning.pytorch.loggers.Logger subclass"),
        ({"callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}]}, "callbacks[0].class_path", "use checkpoint_config"),
        ({"callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"}]}, "callbacks[0].class_path", "--progress"),
        ({"callbacks": [LR_MONITOR | {"init_args": {"logging_intervall": "epoch"}}]}, "callbacks[0].init_args.logging_intervall", "did you mean 'logging_interval'"),
        ({"callbacks": [LR_MONITOR | {"init_args": {"log_momentum": "yes"}}]}, "callbacks[0].init_args.log_momentum", "got 'yes'"),
        ({"callbacks": [LR_MONITOR | {"init_args": {"logging_interval": "hour"}}]}, "callbacks[0].init_args.logging_interval", "got 'hour'"),
        ({"callbacks": [{"class_path": "lightning.pytorch.callbacks.StochasticWeightAveraging", "init_args": {"swa_lrs": -1}}]}, "callbacks[0].init_args", "StochasticWeightAveraging rejected {'swa_lrs': -1}"),
        ({"loggers": [CSV | {"init_args": {"flush_every": 5}}]}, "loggers[0].init_args.flush_every", "did you mean 'flush_logs_every_n_steps'"),
        ({"loggers": [CSV | {"init_args": {"flush_logs_every_n_steps": "often"}}]}, "loggers[0].init_args.flush_logs_every_n_steps", "got 'often'"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_a_config_error_naming_its_key(small_config, entries, key, text) -> None:
    with pytest.raises(ConfigError) as error:
        small_config(**entries)
    assert error.value.key == key and text in str(error.value)


def test_a_missing_logger_package_names_the_extra(small_config, monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install 'lightning-hpo\[mlflow\]'"):
        small_config(loggers=[{"class_path": "lightning.pytorch.loggers.MLFlowLogger"}])


def test_a_tracking_uri_password_is_never_written() -> None:
    mlflow = {
        "class_path": "lightning.pytorch.loggers.MLFlowLogger",
        "init_args": {"tracking_uri": "https://me:s3cret@mlflow.example.org"},
    }
    written = shareable({"loggers": [mlflow], "callbacks": []})
    assert written["loggers"][0]["init_args"]["tracking_uri"] == "https://me:***@mlflow.example.org"
    assert mlflow["init_args"]["tracking_uri"].endswith("s3cret@mlflow.example.org")  # not changed


def test_a_password_nested_in_init_args_is_never_written() -> None:
    uri = "https://me:s3cret@mlflow.example.org"
    logger = {
        "class_path": "lightning.pytorch.loggers.MLFlowLogger",
        "init_args": {"tags": {"source": uri}, "artifact_location": [uri, "x:y@z"]},
    }
    written = shareable({"loggers": [logger]})["loggers"][0]["init_args"]
    assert "s3cret" not in repr(written)
    assert written["tags"]["source"] == "https://me:***@mlflow.example.org"
    # A string with no scheme need not be a URL: left as it is.
    assert written["artifact_location"][1] == "x:y@z"


def test_a_loggers_own_save_dir_keeps_one_run_per_seed_under_it(
    small_config, tmp_path: Path
) -> None:
    csv_dir = tmp_path / "csv"
    cfg = small_config(seeds=[1, 2], loggers=[CSV | {"init_args": {"save_dir": str(csv_dir)}}])
    result = train(cfg, tmp_path / "runs")
    for r in result.results:
        group = r.run_dir.parent.name
        metrics = csv_dir / group / str(r.seed) / "metrics.csv"
        assert _csv_column(metrics, "val_loss") == pytest.approx(r.history)
        assert not (r.run_dir / "metrics.csv").exists()


def test_a_logger_subclass_without_version_gets_only_what_it_takes_one_run_per_seed(
    small_config, user_components, tmp_path: Path
) -> None:
    # Its constructor takes save_dir and name only: version and default_hp_metric are not
    # passed, and each seed's run goes under the seed's own folder, in the logger's name.
    team = {"class_path": "user_components.TeamTensorBoard"}
    result = train(small_config(seeds=[1, 2], loggers=[team]), tmp_path)
    for r in result.results:
        assert len(r.history) == 2
        assert list((r.run_dir / "team" / "version_0").glob("events.out.tfevents.*"))
    assert list((tmp_path / "Test").rglob("mean/team/version_0/events.out.tfevents.*"))


def test_a_logger_that_cannot_be_built_is_refused_at_load_naming_its_class_path(
    small_config, user_components
) -> None:
    clash = {"class_path": "user_components.SelfPlacedTensorBoard"}
    with pytest.raises(ConfigError) as error:
        small_config(loggers=[clash])
    assert error.value.source == "<small config>"
    assert error.value.key == "loggers[0].class_path"
    assert "SelfPlacedTensorBoard could not be built" in error.value.problem
    assert "multiple values for keyword argument 'save_dir'" in error.value.problem
    assert "init_args" not in error.value.key


def test_train_py_refuses_a_logger_that_cannot_be_built_before_writing_anything(
    write_config, user_components, tmp_path: Path, monkeypatch, capsys
) -> None:
    from lightning_hpo.cli import EXIT_BAD_INPUT, train_main

    path = write_config(loggers=[{"class_path": "user_components.SelfPlacedTensorBoard"}])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert train_main(["--config", str(path), "--output", str(cwd / "runs")]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith(f"error: {path}: loggers[0].class_path: SelfPlacedTensorBoard could not")
    assert captured.out == "" and list(cwd.iterdir()) == []
