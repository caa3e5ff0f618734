"""Your own LightningModule (``module:``, ``module_config:``) and any metric it logs: trained by
train.py's function, tuned on its own metric, checked before anything trains, and kept off the
fused path (which runs only the built-in module's steps).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, run_config_from_dict
from lightning_hpo.config.yamlio import load_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.metrics import metric_name_problem, require_logged
from lightning_hpo.training.loading import load_run
from lightning_hpo.training.results import load_result
from lightning_hpo.training.runs import check_fusion, plan_fusion, train
from lightning_hpo.tuning.study import TuneOptions
from lightning_hpo.tuning.tuner import tune

pytestmark = pytest.mark.usefixtures("quiet")
optuna.logging.set_verbosity(optuna.logging.WARNING)

USER_MODULE = "user_components.MAEModule"


def user_run(**overrides):
    data = {
        "project": "Mine",
        "device": "cpu",
        "seeds": [1, 2],
        "epochs": 2,
        "batch_size": 64,
        "data": "user_components.three_to_two",
        "net_config": {"nodes": 8, "layers": 1},
        "module": USER_MODULE,
        "module_config": {"scale": 2.0},
    }
    data.update(overrides)
    cfg = run_config_from_dict(data, "<user run>")
    build(cfg, "<user run>")
    return cfg


def _mae(net: torch.nn.Module) -> float:
    from user_components import three_to_two

    x, y = three_to_two()[1].tensors
    with torch.no_grad():
        return (net(x) - y).abs().mean().item()


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_train_trains_a_user_module_that_logs_its_own_metric(
    user_components, tmp_path: Path
) -> None:
    cfg = user_run()
    result = train(cfg, tmp_path)

    for r in result.results:
        assert r.together == 1  # a module of one's own trains seed after seed
        logged = _scalars(r.run_dir)
        assert len(logged[user_components.USER_METRIC]) == cfg.epochs
        # val_mae is scale x the mean absolute error of the network the epoch ended with.
        net = load_run(r.run_dir, "last")
        assert logged[user_components.USER_METRIC][-1] == pytest.approx(2.0 * _mae(net), rel=1e-5)
        saved = load_yaml(r.run_dir / "config.yaml")
        assert (saved["module"], saved["module_config"]) == (USER_MODULE, {"scale": 2.0})


def test_a_user_modules_checkpoint_loads_back_as_that_module(
    user_components, tmp_path: Path
) -> None:
    (r, _) = train(user_run(), tmp_path).results
    module = user_components.MAEModule.load_from_checkpoint(r.run_dir / "checkpoints" / "last.ckpt")
    assert module.scale == 2.0  # module_config comes back with the other hyperparameters
    net = load_run(r.run_dir, "last")
    x = torch.randn(5, user_components.IN_FEATURES)
    assert torch.equal(module.net(x), net(x))


def test_tune_on_a_metric_only_the_user_module_logs(user_components, tmp_path: Path) -> None:
    run = user_run(epochs=3)
    opt = optimize_config_from_dict(
        {
            "study_name": "mine",
            "trials": 3,
            "seed": 1,
            "pruner": None,
            "metric": user_components.USER_METRIC,
            "search_space": {
                "optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-1}},
                "module_config": {"scale": {"type": "categorical", "choices": [1.0, 3.0]}},
            },
        },
        run,
        "<user optimize>",
    )
    settings = TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))

    study = tune(run, opt, settings, echo=lambda line: None)

    assert study.metric_names == [user_components.USER_METRIC]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for t in study.trials:
        seeds = [Path(t.user_attrs["run_dir"]) / str(s) for s in (1, 2)]
        # Not fused: the trial reports its first seed's curve and returns the seeds' mean.
        assert sorted(t.intermediate_values) == [0, 1, 2]
        assert t.intermediate_values[2] == pytest.approx(load_result(seeds[0]).final)
        assert t.value == pytest.approx(statistics.fmean(load_result(d).final for d in seeds))
        scale = t.params["module_config_scale"]
        assert load_yaml(seeds[0] / "config.yaml")["module_config"] == {"scale": scale}
        assert t.value == pytest.approx(
            statistics.fmean(scale * _mae(load_run(d, "last")) for d in seeds), rel=1e-5
        )


def test_a_metric_nobody_logs_stops_the_run_naming_the_logged_ones(
    user_components, tmp_path: Path
) -> None:
    from lightning_hpo.training.runs import FitOptions, fit_run

    cfg = user_run(seeds=[1])
    with pytest.raises(ConfigError, match="'val_mea' is never logged") as error:
        fit_run(cfg, cfg.seeds, [tmp_path / "1"], FitOptions(monitor="val_mea"))
    assert "val_mae" in str(error.value) and "val_loss" in str(error.value)


# --------------------------------------------------------------------------- fusing


def test_a_user_module_cannot_fuse_and_says_why(user_components) -> None:
    *_, stacking, reason = plan_fusion(user_run(), [1, 2])
    assert stacking is None
    assert USER_MODULE in reason and "SupervisedModule" in reason
    with pytest.raises(ConfigError, match="fuse_seeds") as error:
        check_fusion(user_run(fuse_seeds=True))
    assert USER_MODULE in str(error.value)


def test_the_built_in_module_named_explicitly_still_fuses(user_components) -> None:
    cfg = user_run(module="lightning_hpo.builtin.SupervisedModule", module_config={})
    *_, stacking, reason = plan_fusion(cfg, [1, 2])
    assert stacking is not None, reason


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("overrides", "key", "text"),
    [
        ({"module": "user_components.NotAModule"}, "module", "not a lightning.pytorch"),
        ({"module": "user_components.TinyNet"}, "module", "not a lightning.pytorch"),
        ({"module_config": {"scael": 2.0}}, "module_config.scael", "did you mean 'scale'"),
        ({"module_config": {"criterion": "x"}}, "module_config.criterion", "by the run itself"),
    ],
)
def test_a_bad_module_is_refused_before_anything_trains(
    user_components, overrides, key, text
) -> None:
    with pytest.raises(ConfigError) as error:
        user_run(**overrides)
    assert error.value.key == key and text in str(error.value)


def test_a_module_that_does_not_take_the_run_arguments_is_refused(
    user_components, monkeypatch
) -> None:
    import lightning.pytorch as pl

    class Bare(pl.LightningModule):
        def __init__(self, net, criterion):
            super().__init__()

    monkeypatch.setattr(user_components, "Bare", Bare, raising=False)
    with pytest.raises(ConfigError, match="takes no argument 'optimizer'") as error:
        user_run(module="user_components.Bare", module_config={})
    assert error.value.key == "module"


def test_the_search_space_checks_module_config_against_the_module(user_components) -> None:
    with pytest.raises(ConfigError) as error:
        optimize_config_from_dict(
            {"search_space": {"module_config": {"sacle": {"type": "float", "min": 1, "max": 2}}}},
            user_run(),
            "<opt>",
        )
    assert error.value.key == "search_space.module_config.sacle" or "sacle" in str(error.value)


@pytest.mark.parametrize("name", ["val_mae", "val/f1", "my_metric_2", "val_acc"])
def test_metric_accepts_any_logged_name(name: str) -> None:
    assert metric_name_problem(name) is None


@pytest.mark.parametrize("name", [3, None, "", "val loss", "val_loss/seed_89", ["val_loss"]])
def test_metric_refuses_what_cannot_be_a_logged_name(name) -> None:
    assert metric_name_problem(name)


def test_a_per_seed_metric_is_refused_for_its_plain_name(user_components) -> None:
    with pytest.raises(ConfigError, match="plain name 'val_loss'"):
        optimize_config_from_dict(
            {
                "metric": "val_loss/seed_1",
                "search_space": {
                    "optimizer_config": {"lr": {"type": "float", "min": 0.001, "max": 0.1}}
                },
            },
            user_run(),
            "<opt>",
        )


def test_require_logged_names_the_logged_metrics() -> None:
    logged = ["val_loss", "val_loss/seed_1", "val_acc", "lr", "lightning_hpo/history/1"]
    require_logged("val_acc", logged)
    with pytest.raises(ConfigError) as error:
        require_logged("val_accuracy", logged, "opt.yaml")
    message = str(error.value)
    assert message.startswith("opt.yaml: metric: 'val_accuracy' is never logged")
    assert "(it logs: lr, val_acc, val_loss);" in message and "did you mean 'val_acc'" in message
