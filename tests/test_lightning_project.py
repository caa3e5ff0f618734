"""A Lightning project as it is: a LightningModule that builds its own network and optimizer
(Lightning's own demo classes, which this package did not write) and any LightningDataModule,
trained by train.py's function and tuned, its DataModule kept to Lightning's contract."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, run_config_from_dict
from lightning_hpo.config.yamlio import load_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.loading import load_run
from lightning_hpo.training.preflight import preflight_run
from lightning_hpo.training.results import load_result
from lightning_hpo.training.runs import plan_fusion, train
from lightning_hpo.tuning.study import TuneOptions
from lightning_hpo.tuning.tuner import tune

pytestmark = pytest.mark.usefixtures("quiet")
optuna.logging.set_verbosity(optuna.logging.WARNING)

BORING_DATA = "lightning.pytorch.demos.boring_classes.BoringDataModule"


def demo_run(**overrides):
    data = {
        "project": "Demo",
        "device": "cpu",
        "seeds": [1, 2],
        "epochs": 2,
        "data": BORING_DATA,
        "module": "user_components.LoggedDemoModel",
        "module_config": {"out_dim": 4, "learning_rate": 0.01},
    }
    data.update(overrides)
    cfg = run_config_from_dict(data, "<demo run>")
    return build(cfg, "<demo run>")


@pytest.fixture
def counting(user_components):
    user_components.CountingData.events.clear()
    return user_components.CountingData


# --------------------------------------------------------------------------- the module


def test_a_demo_module_trains_from_module_config_and_loads_back_as_itself(
    user_components, tmp_path: Path
) -> None:
    from lightning.pytorch.demos.boring_classes import BoringDataModule

    cfg = demo_run()
    result = train(cfg, tmp_path)

    val = None
    for r in result.results:
        assert r.together == 1 and len(r.history) == cfg.epochs  # seed after seed
        saved = load_yaml(r.run_dir / "config.yaml")
        assert saved["module_config"] == {"out_dim": 4, "learning_rate": 0.01}
        assert not {"net", "optimizer", "scheduler", "criterion"} & saved.keys()
        module = load_run(r.run_dir, "last")
        assert isinstance(module, user_components.LoggedDemoModel) and not module.training
        assert module.l1.out_features == 4  # module_config, though DemoModel saves no hparams
        if val is None:  # the run's data: built once, after seed_everything(first seed)
            torch.manual_seed(cfg.seeds[0])
            dm = BoringDataModule()
            dm.setup("fit")
            val = torch.stack([dm.random_val[i] for i in range(len(dm.random_val))])
        with torch.no_grad():
            assert r.history[-1] == pytest.approx(module(val).sum(1).mean().item(), rel=1e-5)
    first, second = (load_run(r.run_dir, "last") for r in result.results)
    assert not torch.equal(first.l1.weight, second.l1.weight)  # each seed its own init


@pytest.mark.parametrize(
    ("module", "epochs", "lr", "count"),
    [
        # BoringModel: SGD(lr=0.1) and StepLR(step_size=1, gamma=0.1), stepped once an epoch.
        ("user_components.LoggedBoringModel", 2, 0.1 * 0.1**2, 2),
        # lr / (1 + step) after every optimizer step: 64 batches of one sample an epoch.
        ("user_components.StepScheduledDemo", 2, 0.01 / (1 + 128), 128),
    ],
)
def test_a_modules_own_schedule_steps_as_it_configures_it(
    user_components, tmp_path: Path, module, epochs, lr, count
) -> None:
    config = {"out_dim": 4, "learning_rate": 0.01} if "Demo" in module else {}
    cfg = demo_run(module=module, module_config=config, epochs=epochs, seeds=[3])
    (r,) = train(cfg, tmp_path).results
    checkpoint = torch.load(r.run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == count
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("net", "lightning_hpo.builtin.MLP"),
        ("net_config", {"nodes": 8}),
        ("optimizer", "torch.optim.SGD"),
        ("optimizer_config", {"lr": 0.1}),
        ("scheduler", None),
        ("criterion", "torch.nn.L1Loss"),
    ],
)
def test_a_part_key_given_with_a_module_that_builds_its_own_is_refused(
    user_components, key, value
) -> None:
    with pytest.raises(ConfigError) as error:
        demo_run(**{key: value})
    assert error.value.key == key and "module_config" in str(error.value)


def test_a_module_taking_some_parts_only_is_refused_saying_both_ways(user_components) -> None:
    with pytest.raises(ConfigError, match="takes no argument 'criterion'") as error:
        demo_run(module="user_components.NetOnlyModule", module_config={})
    assert "none of net, criterion, optimizer" in str(error.value)


def test_the_preflight_builds_the_module_from_module_config_and_runs_its_steps(
    user_components,
) -> None:
    result = preflight_run(demo_run())
    assert [c.name for c in result.checks] == ["data", "module", "Lightning"]
    assert result.parameters == 32 * 4 + 4 and "val_loss" in result.metrics
    with pytest.raises(ConfigError) as error:
        preflight_run(demo_run(module_config={"out_dim": -1}), "run.yaml")
    assert error.value.key == "module_config.out_dim" and error.value.source == "run.yaml"


def test_a_module_that_builds_its_own_parts_does_not_fuse(user_components) -> None:
    dm, nets, stacking, reason = plan_fusion(demo_run(), [1, 2])
    assert (nets, stacking) == ([], None)
    assert "LoggedDemoModel is not the built-in" in reason


def test_tuning_a_demo_module_searches_module_config_and_data_config(
    counting, tmp_path: Path
) -> None:
    run = demo_run(data="user_components.CountingData", data_config={"batch_size": 8}, epochs=2)
    space = {
        "module_config": {"learning_rate": {"type": "float", "min": 1.0e-3, "max": 1.0e-1}},
        "data_config": {"length": {"type": "categorical", "choices": [32, 64]}},
    }
    opt = optimize_config_from_dict(
        {"study_name": "demo", "trials": 3, "seed": 1, "pruner": None, "search_space": space},
        run,
        "<demo optimize>",
    )
    settings = TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))

    study = tune(run, opt, settings, echo=lambda line: None)

    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for t in study.trials:
        seeds = [Path(t.user_attrs["run_dir"]) / str(s) for s in (1, 2)]
        saved = load_yaml(seeds[0] / "config.yaml")
        assert saved["module_config"]["learning_rate"] == t.params["module_config_learning_rate"]
        assert saved["data_config"]["length"] == t.params["data_config_length"]
        assert "lr_schedule" not in t.user_attrs  # its own configure_optimizers: not known
        assert t.value == pytest.approx(
            (load_result(seeds[0]).final + load_result(seeds[1]).final) / 2
        )
        module = load_run(seeds[0], "last")
        assert module.learning_rate == t.params["module_config_learning_rate"]
    # Each trial built its DataModule once and prepared it once, before any setup.
    assert counting.events.count("init") == 3 and counting.events.count("prepare_data") == 3
    for trial in " ".join(counting.events).split("init")[1:]:
        assert trial.split() == ["prepare_data", "setup:fit", "setup:fit"]


def test_searching_a_part_key_of_a_module_that_builds_its_own_is_refused(
    user_components,
) -> None:
    space = {"optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-1}}}
    with pytest.raises(ConfigError, match="search its own arguments under module_config") as e:
        optimize_config_from_dict(
            {"study_name": "demo", "trials": 2, "search_space": space}, demo_run(), "opt.yaml"
        )
    assert e.value.key == "search_space.optimizer_config"


# --------------------------------------------------------------------------- the DataModule


def test_a_datamodule_is_built_and_prepared_once_per_run_before_any_setup(
    counting, small_config, tmp_path: Path
) -> None:
    # The built-in module on a DataModule of (x, y) pairs: it cannot fuse, so 3 seeds train
    # one after another on the one DataModule; its batch sizes the network once.
    cfg = small_config(
        data="user_components.CountingData",
        data_config={"pairs": True},
        seeds=[1, 2, 3],
        fuse_seeds="auto",
    )
    result = train(cfg, tmp_path)
    assert [r.together for r in result.results] == [1, 1, 1]
    assert counting.events == ["init", "prepare_data"] + ["setup:fit"] * 4


def test_a_datamodule_whose_setup_reads_the_trainer_passes_preflight_and_trains(
    counting, tmp_path: Path
) -> None:
    # The module builds its own parts: only the preflight's data check sets it up outside fit.
    cfg = demo_run(data="user_components.TrainerReadingData", seeds=[1])
    assert "data" in [c.name for c in preflight_run(cfg, "<demo run>").checks]
    (r,) = train(cfg, tmp_path).results
    assert len(r.history) == cfg.epochs


def test_a_datamodule_whose_setup_reads_the_trainer_sizes_the_built_in_network(
    counting, small_config, tmp_path: Path
) -> None:
    # The built-in module: the first batch, read before fit, sizes the network.
    cfg = small_config(data="user_components.TrainerReadingData", data_config={"pairs": True})
    preflight_run(cfg, "<small config>")
    (r,) = train(cfg, tmp_path).results
    assert len(r.history) == cfg.epochs
    assert counting.events.count("setup:fit") == 3 + 2  # preflight: 2 probes, 1 fit; run: 1, 1


@pytest.mark.slow
def test_under_ddp_spawn_data_is_prepared_once_and_set_up_on_every_rank(
    counting, tmp_path: Path
) -> None:
    record = tmp_path / "events.txt"
    cfg = demo_run(
        data="user_components.CountingData",
        data_config={"record": str(record)},
        seeds=[1],
        devices=2,
        strategy="ddp_spawn",
    )
    train(cfg, tmp_path / "runs")
    lines = [line.split() for line in record.read_text().splitlines()]
    main = lines[0][1]
    assert [e for e, _ in lines[:2]] == ["init", "prepare_data"] and lines[1][1] == main
    ranks = {pid for e, pid in lines if e == "setup:fit"}
    assert (
        len(ranks) == 2 and main not in ranks and [e for e, _ in lines].count("prepare_data") == 1
    )
