"""best.yaml is the config the best trial trained, whatever the configs of a later run say.

A study is run, then finished again as a rerun would finish it: with a narrower search
space, other epochs or other seeds. best.yaml must still hold the best trial's own values
(read from its seeds' ``config.yaml``); where its run folder is not on this machine, it is
the current configs with the trial's parameters, and a warning line says what differs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from optuna.trial import TrialState, create_trial

from lightning_hpo.attrs import EPOCHS_ATTR, N_SEEDS_ATTR, RUN_DIR, SEEDS_ATTR
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, load_run_config, run_config_from_dict
from lightning_hpo.config.yamlio import dump_yaml, load_yaml
from lightning_hpo.training.files import CONFIG_FILE
from lightning_hpo.training.runs import train
from lightning_hpo.tuning.best import trained_config
from lightning_hpo.tuning.study import TuneOptions, create_or_load_study
from lightning_hpo.tuning.tuner import finish, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)

PROJECT = "Best"
LR = {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-1, "log": True}}
WIDE = {
    "net_config": {"nodes": {"type": "categorical", "choices": [8, 16]}},
    "optimizer_config": LR,
}
NARROW = {"optimizer_config": LR}


def make_run(**overrides):
    data = {
        "project": PROJECT,
        "device": "cpu",
        "seeds": [1],
        "epochs": 2,
        "batch_size": 128,
        "data_config": {"n": 300},
        "net_config": {"nodes": 64, "layers": 2},
    }
    data.update(overrides)
    cfg = run_config_from_dict(data, "<test run>")
    build(cfg, "<test run>")
    return cfg


def make_opt(run, space, trials=2):
    data = {
        "study_name": "best",
        "trials": trials,
        "seed": 1,
        "pruner": None,
        "search_space": space,
    }
    return optimize_config_from_dict(data, run, "<test optimize>")


def options(tmp_path: Path, output: str = "runs") -> TuneOptions:
    return TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / output))


def first_study(tmp_path: Path, run, space=WIDE) -> optuna.Study:
    """Two trials whose nodes differ from the run config's 64 (and from each other)."""
    opt = make_opt(run, space)
    settings = options(tmp_path)
    queued = create_or_load_study(run, opt, settings)
    for nodes, lr in ((8, 3.0e-3), (16, 2.0e-2)):
        queued.enqueue_trial({"net_config_nodes": nodes, "optimizer_config_lr": lr})
    study = tune(run, opt, settings, echo=lambda line: None)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    return study


def rerun(tmp_path: Path, run, space, output: str = "runs") -> tuple[Path, list[str]]:
    """The study run again with these configs (it is full: no trial runs), then finished."""
    opt = make_opt(run, space)
    settings = options(tmp_path, output)
    study = tune(run, opt, settings, echo=lambda line: None)
    assert len(study.trials) == 2  # nothing new trained
    lines: list[str] = []
    path = finish(run, opt, study, settings, echo=lines.append)
    return path, lines


def seed_config(trial, seed: int) -> dict:
    return load_yaml(Path(trial.user_attrs[RUN_DIR]) / str(seed) / CONFIG_FILE)


def test_a_narrower_search_space_and_other_epochs_leave_best_yaml_the_trained_config(
    tmp_path: Path, quiet
) -> None:
    study = first_study(tmp_path, make_run())
    best = study.best_trial
    assert best.params["net_config_nodes"] in (8, 16)

    # Rerun with nodes no longer searched (the run config says 64) and 5 epochs.
    path, lines = rerun(tmp_path, make_run(epochs=5), NARROW)

    written = load_yaml(path)
    assert written["net_config"]["nodes"] == best.params["net_config_nodes"]  # not 64
    assert written["optimizer_config"]["lr"] == best.params["optimizer_config_lr"]
    assert written["epochs"] == best.user_attrs[EPOCHS_ATTR] == 2  # not 5
    assert written["project"] == PROJECT  # the user's project, not the study's <project>_Opt
    assert written["seeds"] == [1]
    # Exactly what the trial's seed wrote, nothing of the current configs.
    assert written == seed_config(best, 1) | {"project": PROJECT}
    assert not any(line.startswith("warning:") for line in lines), lines


def test_best_yaml_restores_every_seed_in_the_trial_s_order_and_retrains_its_value(
    tmp_path: Path, quiet
) -> None:
    # Seed 2 first: the run's data is built from the first seed, so the order matters.
    study = first_study(tmp_path, make_run(seeds=[2, 1]), NARROW)
    best = study.best_trial
    assert best.user_attrs[SEEDS_ATTR] == [2, 1] and best.user_attrs[N_SEEDS_ATTR] == 2

    path, _ = rerun(tmp_path, make_run(seeds=[1], epochs=3), NARROW)

    cfg = load_run_config(path)
    assert (cfg.seeds, cfg.epochs) == ([2, 1], 2)
    assert cfg.net_config["nodes"] == 64  # never searched: the value the trials trained with
    retrained = train(cfg, tmp_path / "retrain")
    assert retrained.mean == best.value  # the best trial again, operation for operation


def test_best_yaml_is_found_where_the_study_folder_moved(tmp_path: Path, quiet) -> None:
    """RUN_DIR is where the trial ran; the study's folder under this run's ``--output``
    holds the same trial folder when ``runs/`` was moved (another mount point, a copy)."""
    study = first_study(tmp_path, make_run())
    best = study.best_trial
    shutil.move(tmp_path / "runs", tmp_path / "moved")

    path, lines = rerun(tmp_path, make_run(epochs=5), NARROW, output="moved")

    assert path.parent.parent.parent == tmp_path / "moved"
    written = load_yaml(path)
    assert written["net_config"]["nodes"] == best.params["net_config_nodes"]
    assert written["epochs"] == 2
    assert not any(line.startswith("warning:") for line in lines), lines


def test_without_the_trial_folder_best_yaml_is_rebuilt_and_one_line_warns_of_differences(
    tmp_path: Path, quiet
) -> None:
    study = first_study(tmp_path, make_run())
    best = study.best_trial
    nodes = best.params["net_config_nodes"]
    shutil.rmtree(best.user_attrs[RUN_DIR])  # trained on another machine: not here

    # The same configs as the study's: nothing known to differ, no warning.
    path, lines = rerun(tmp_path, make_run(), WIDE)
    assert (load_yaml(path)["net_config"]["nodes"], load_yaml(path)["epochs"]) == (nodes, 2)
    assert not any(line.startswith("warning:") for line in lines), lines

    # A narrower space and other epochs: the current configs, and one line saying so.
    path, lines = rerun(tmp_path, make_run(epochs=5), NARROW)
    written = load_yaml(path)
    assert written["optimizer_config"]["lr"] == best.params["optimizer_config_lr"]
    assert (written["net_config"]["nodes"], written["epochs"]) == (64, 5)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, lines
    assert str(path) in warnings[0] and best.user_attrs[RUN_DIR] in warnings[0]
    assert f"net_config_nodes={nodes}" in warnings[0] and "epochs 2 (now 5)" in warnings[0]


def test_the_trial_s_recorded_seeds_are_read_and_no_other_folder(tmp_path: Path) -> None:
    """A trial folder can hold a seed the trial did not train (a retry copies the folder of
    the trial it continues); a trial from before the seeds were recorded has all found,
    as many as it trained, in the current run config's order."""
    folder = tmp_path / "g[0]"
    for seed in (3, 1, 2):
        (folder / str(seed)).mkdir(parents=True)
        dump_yaml(
            {"project": f"{PROJECT}_Opt", "seeds": [seed], "epochs": 4},
            folder / str(seed) / CONFIG_FILE,
        )
    (folder / "mean").mkdir()  # the fused seeds' TensorBoard curve: no config

    def trial(**attrs):
        return create_trial(value=1.0, user_attrs=attrs)

    assert trained_config(trial(**{SEEDS_ATTR: [2, 1], N_SEEDS_ATTR: 2}), folder, [1]) == {
        "project": PROJECT,
        "seeds": [2, 1],
        "epochs": 4,
    }
    assert trained_config(trial(**{SEEDS_ATTR: [1, 4], N_SEEDS_ATTR: 2}), folder, [1]) is None
    # Recorded before seeds were: the current order where it names them, then ascending.
    assert trained_config(trial(**{N_SEEDS_ATTR: 3}), folder, [2, 5])["seeds"] == [2, 1, 3]
    assert trained_config(trial(**{N_SEEDS_ATTR: 2}), folder, [2, 5]) is None  # which two?
    # Seeds whose configs disagree beyond their seed were not one run.
    dump_yaml({"project": "X_Opt", "seeds": [1], "epochs": 9}, folder / "1" / CONFIG_FILE)
    assert trained_config(trial(**{SEEDS_ATTR: [2, 1], N_SEEDS_ATTR: 2}), folder, [1]) is None
