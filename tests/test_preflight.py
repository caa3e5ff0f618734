"""Preflight: every component built and one batch trained before anything is written.

The value-type cases (a wrong value in each ``*_config`` mapping) are in the bad-input
corpora (tests/bad_inputs/run/ and tests/bad_inputs/optimize/); these tests cover what the
checks show, the search space's corners, and that ``--preflight`` only checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_hpo.cli import EXIT_BAD_INPUT, train_main, tune_main
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.preflight import preflight_run, space_corners
from lightning_hpo.training.probe import probe_kwargs

SPACE = {
    "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}},
    "net_config": {
        "layers": {"type": "int", "min": 1, "max": 3},
        "activation": {"type": "categorical", "choices": ["GELU", "ReLU", "Tanh", "SiLU"]},
    },
}
CHECKS = ["data", "net", "loss", "optimizer step", "scheduler step", "Lightning"]


def _optimize(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "optimize.yaml"
    dump_yaml({"study_name": "pf", "trials": 2, "search_space": SPACE} | overrides, path)
    return path


def _in_empty_cwd(tmp_path: Path, monkeypatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_preflight_runs_every_check_and_shows_the_metrics_the_module_logs(
    small_config, quiet
) -> None:
    result = preflight_run(small_config(), "run.yaml")
    assert [c.name for c in result.checks] == CHECKS
    assert {"train_loss", "val_loss", "val_r2", "lr"} <= set(result.metrics)
    assert result.device == "cpu"
    assert result.parameters == (1 * 8 + 8) + (8 * 1 + 1)  # MLP 1 -> 8 -> 1
    assert all(c.seconds >= 0 for c in result.checks) and result.seconds > 0


def test_preflight_without_a_scheduler_skips_its_step(small_config, quiet) -> None:
    result = preflight_run(small_config(scheduler=None), "run.yaml")
    assert [c.name for c in result.checks] == [c for c in CHECKS if c != "scheduler step"]


def test_probe_names_the_one_key_the_component_rejects() -> None:
    def build(lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False):
        return 2 * lr + momentum  # a str lr fails here, a str momentum too

    with pytest.raises(ConfigError) as info:
        probe_kwargs(
            lambda kw: build(**kw),
            {"lr": 0.5, "momentum": "high", "nesterov": True},
            "run.yaml",
            "optimizer_config",
            build,
            "build",
        )
    err = info.value
    assert err.key == "optimizer_config.momentum"
    assert "rejected 'high'" in err.problem and "its default is 0.0" in err.fix


def test_probe_blames_the_group_when_no_single_key_is_at_fault() -> None:
    def build(a: int, b: int):
        if a + b > 2:  # both keys together: neither alone is wrong, and neither can go
            raise ValueError("a + b must be at most 2")
        return a + b

    with pytest.raises(ConfigError) as info:
        probe_kwargs(lambda kw: build(**kw), {"a": 2, "b": 2}, "f.yaml", "net_config", build, "b")
    assert info.value.key == "net_config"


def test_probe_blames_a_required_key_of_the_wrong_type() -> None:
    def build(a: int, b: int):
        return a + b

    with pytest.raises(ConfigError) as info:
        probe_kwargs(lambda kw: build(**kw), {"a": 1, "b": "x"}, "f.yaml", "net_config", build, "b")
    assert info.value.key == "net_config.b"  # b cannot be left out, but it is not an int


def test_corners_cover_both_ends_and_every_choice(small_config) -> None:
    from lightning_hpo.config.optimize import optimize_config_from_dict

    run = small_config()
    opt = optimize_config_from_dict({"study_name": "s", "search_space": SPACE}, run, "o.yaml")
    corners = space_corners(opt, run)
    labels = [label for label, _, _ in corners]
    assert labels[:2] == ["low corner", "high corner"] and len(corners) == 4
    low, high = corners[0][1], corners[1][1]
    assert (low.optimizer_config["lr"], low.net_config["layers"]) == (1.0e-4, 1)
    assert (high.optimizer_config["lr"], high.net_config["layers"]) == (1.0e-2, 3)
    seen = {cfg.net_config["activation"] for _, cfg, _ in corners}
    assert seen == {"GELU", "ReLU", "Tanh", "SiLU"}
    # Numbers stay at their high end (the largest network) once both ends are covered.
    assert all(cfg.net_config["layers"] == 3 for _, cfg, _ in corners[2:])


def test_corners_without_many_choices_are_just_the_two_ends(small_config) -> None:
    from lightning_hpo.config.optimize import optimize_config_from_dict

    run = small_config()
    space = {"optimizer_config": SPACE["optimizer_config"]}
    opt = optimize_config_from_dict({"study_name": "s", "search_space": space}, run, "o.yaml")
    assert [label for label, _, _ in space_corners(opt, run)] == ["low corner", "high corner"]


def test_train_preflight_only_checks_and_writes_nothing(
    tmp_path, monkeypatch, capsys, write_config
) -> None:
    config = write_config()
    cwd = _in_empty_cwd(tmp_path, monkeypatch)
    code = train_main(["--config", str(config), "--output", str(cwd / "runs"), "--preflight"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith(f"preflight of {config} on cpu:")
    for check in CHECKS:
        assert f"  {check} " in out
    assert "logs lr, train_loss, val_loss, val_r2" in out
    assert list(cwd.iterdir()) == []


def test_tune_preflight_checks_each_corner_and_opens_no_storage(
    tmp_path, monkeypatch, capsys, write_config
) -> None:
    run, opt = write_config(), _optimize(tmp_path)
    cwd = _in_empty_cwd(tmp_path, monkeypatch)
    code = tune_main(
        ["--run-config", str(run), "--optimize-config", str(opt), "--preflight",
         "--storage", f"sqlite:///{cwd}/study.db", "--output", str(cwd / "runs")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith(f"preflight of {run} on cpu:")
    assert f"search space of {opt}, 4 corners:" in out
    assert "low corner: optimizer_config_lr=0.0001, net_config_layers=1" in out
    assert "high corner: optimizer_config_lr=0.01, net_config_layers=3" in out
    assert out.splitlines()[-1].startswith("passed: 5 config(s)")
    assert list(cwd.iterdir()) == []


def test_tune_refuses_a_metric_the_module_never_logs_naming_those_it_does(
    tmp_path, monkeypatch, capsys, write_config
) -> None:
    run, opt = write_config(), _optimize(tmp_path, metric="val_los")
    cwd = _in_empty_cwd(tmp_path, monkeypatch)
    code = tune_main(
        ["--run-config", str(run), "--optimize-config", str(opt),
         "--storage", f"sqlite:///{cwd}/study.db", "--output", str(cwd / "runs")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.count("\n") == 1 and f"{opt}: metric: 'val_los' is never logged" in err
    assert "it logs: lr, train_loss, val_loss, val_r2" in err and "did you mean 'val_loss'?" in err
    assert list(cwd.iterdir()) == []


def test_a_real_run_reports_the_preflight_cost_first(
    tmp_path, monkeypatch, capsys, write_config
) -> None:
    config = write_config()
    cwd = _in_empty_cwd(tmp_path, monkeypatch)
    assert train_main(["--config", str(config), "--output", str(cwd / "runs")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("preflight passed: 1 config(s) built and trained for one batch in")


def test_a_module_that_never_logs_val_loss_is_refused_before_train_writes(
    tmp_path, monkeypatch, capsys, write_config, user_components
) -> None:
    config = write_config(module="user_components.QuietModule")
    cwd = _in_empty_cwd(tmp_path, monkeypatch)
    code = train_main(["--config", str(config), "--output", str(cwd / "runs")])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and err.count("\n") == 1, err
    assert f"{config}: module: user_components.QuietModule never logs 'val_loss'" in err
    assert "(it logs lr, train_loss, val_quiet)" in err
    assert list(cwd.iterdir()) == []


def test_batches_that_are_not_pairs_leave_the_checks_to_the_module(
    small_config, user_components, quiet
) -> None:
    cfg = small_config(
        data="user_components.DictBatches",
        data_config={},
        module="user_components.DictModule",
        net="user_components.TinyNet",
        net_config={"in_features": 3, "out_features": 2},
    )
    result = preflight_run(cfg, "run.yaml")
    assert [c.name for c in result.checks] == ["data", "Lightning"]
    assert "a dict batch, not (x, y)" in result.checks[0].detail
    assert {"val_loss", "val_r2"} <= set(result.metrics)
