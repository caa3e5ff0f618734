"""``tune.py report`` describes a study as stored: its metric, objective and ranges, the
pruner its run used and its project folder come from the study, not from whichever config
is at hand (``--storage`` and ``--study-name`` alone, as the SLURM launcher's ``--no-wait``
hint prints, find only the packaged templates). A config given must be the study's own,
and is loaded without its device check or imports (a GPU study, reported from a login
node)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from lightning_hpo.attrs import PRUNER_ATTR, RUN_DIR
from lightning_hpo.cli import EXIT_BAD_INPUT, report_main
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import run_config_from_dict
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.report.stored import stored_params
from lightning_hpo.tuning.study import TuneOptions, create_or_load_study

optuna.logging.set_verbosity(optuna.logging.ERROR)

STUDY = "other"
LR = FloatDistribution(1.0e-3, 1.0e-1, log=True)  # the packaged template's is [1e-4, 1e-2]
NODES = CategoricalDistribution([4, 8, 16])  # the template's: [32, 64, 128]
PRUNER = {
    "name": "lightning_hpo.PFLPruner",
    "kwargs": {"n_startup_trials": 1, "n_warmup_epochs": 1, "top_k": 1},
}
# Minimized curves; the slow starter ends best (lr 1e-2 is inside LR, at the template's max).
SPACE = {"type": "int", "min": 16, "max": 64}
CURVES = [([5.0, 4.0, 3.0, 0.1], 1.0e-2, 16), ([1.0, 0.9, 0.8, 0.7], 2.0e-3, 8)]
CURVES += [([1.2, 1.0, 0.9, 0.8], 3.0e-2, 4)]


def make_study(url: str, pruner: dict | None = PRUNER) -> None:
    """A study as the tuner stores one, of a config unlike the templates: val_mae at its
    best epoch, other ranges, another pruner, project Other."""
    study = optuna.create_study(study_name=STUDY, storage=url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(["val_mae (best epoch)"])
    if pruner:
        study.set_user_attr(PRUNER_ATTR, pruner)
    for number, (curve, lr, nodes) in enumerate(CURVES):
        study.add_trial(
            create_trial(
                params={"optimizer_config_lr": lr, "net_config_nodes": nodes},
                distributions={"optimizer_config_lr": LR, "net_config_nodes": NODES},
                value=min(curve),
                intermediate_values=dict(enumerate(curve)),
                user_attrs={"epochs": len(curve), RUN_DIR: f"runs/Other_Opt/{STUDY}/g[{number}]"},
            )
        )


def call(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = report_main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the defaults are the packaged templates
    return f"sqlite:///{tmp_path / 'other.db'}"


def test_storage_and_study_name_alone_describe_the_study_as_stored(
    url: str, tmp_path: Path
) -> None:
    make_study(url)
    code, out, err = call(["--storage", url, "--study-name", STUDY, "--json", "--output", "out"])
    assert code == 0, err
    report = json.loads(out)
    assert (report["metric"], report["objective"]) == ("val_mae", "best")
    # Edges of the ranges the trials were sampled from, not of the template's.
    [edge] = report["boundary_warnings"]
    assert edge["param"] == "net_config_nodes" and edge["range"] == [4, 8, 16]
    assert edge["suggested_choice"] == 32
    # The stored pruner replayed: it cuts the slow starter; the template's (10 start-up
    # trials) would cut nothing in a study of 3.
    replay = report["audit"]["replay"]
    assert replay["pruner_from"] == "study" and "n_startup_trials=1" in replay["pruner"]
    assert replay["would_prune"] == 1 and replay["trials"][0]["number"] == 0
    # Plots beside the study's own trials (runs/Other_Opt), not the template's project.
    folder = tmp_path / "out" / "Other_Opt" / "reports" / STUDY
    assert report["plots"]["slice"] == str(
        Path("out") / "Other_Opt" / "reports" / STUDY / "slice.png"
    )
    assert (folder / "slice.png").stat().st_size > 0
    assert not (tmp_path / "out" / "MLP_Example_Opt").exists()
    code, text, _ = call(["--storage", url, "--study-name", STUDY, "--no-plots"])
    assert "(val_mae at its best epoch, minimize)" in text.splitlines()[0]
    assert "val_loss" not in text


def test_a_study_that_stores_no_pruner_says_so(url: str) -> None:
    make_study(url, pruner=None)
    code, text, err = call(["--storage", url, "--study-name", STUDY, "--no-plots"])
    assert code == 0, err
    assert "(the study stores no pruner: give --optimize-config to replay its own)" in text


def test_a_config_given_for_another_study_is_refused(url: str) -> None:
    from lightning_hpo.config.scaffold import OPTIMIZE_TEMPLATE, template_dir

    make_study(url)
    template = str(template_dir() / OPTIMIZE_TEMPLATE)
    argv = ["--storage", url, "--study-name", STUDY, "--optimize-config", template, "--no-plots"]
    code, out, err = call(argv)
    assert code == EXIT_BAD_INPUT and out == ""
    # One line (after the note that the packaged run template validates the config).
    [line] = [line for line in err.splitlines() if not line.startswith("note: ")]
    assert line.startswith(f"error: {template}: metric: the existing study's values are val_mae")
    assert "leave --optimize-config out to report the study as stored" in line


def test_the_studys_own_configs_load_without_their_device_or_imports(
    url: str, tmp_path: Path
) -> None:
    make_study(url)
    # Trained on a GPU with a package of its own: neither is on this (login) node.
    run = {"project": "Other", "device": "cuda:7", "net": "not_installed_here.Net"}
    space = {
        "optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-1, "log": True}},
        "net_config": {"nodes": {"type": "categorical", "choices": [4, 8, 16]}},
    }
    opt = {"study_name": STUDY, "metric": "val_mae", "objective": "best", "search_space": space}
    opt["pruner"] = {"name": "optuna.pruners.MedianPruner", "kwargs": {"n_startup_trials": 1}}
    dump_yaml(run, tmp_path / "run.yaml")
    dump_yaml(opt, tmp_path / "optimize.yaml")
    argv = ["--run-config", "run.yaml", "--optimize-config", "optimize.yaml"]
    code, out, err = call([*argv, "--storage", url, "--json", "--no-plots"])
    assert code == 0, err
    replay = json.loads(out)["audit"]["replay"]
    # The config given is the study's: its pruner (here through a PFL stand-in) replays.
    assert replay["pruner_from"] == "config"
    assert replay["stand_in_for"] == "optuna.pruners.MedianPruner"


def test_the_tuner_stores_the_pruner_its_run_uses(tmp_path: Path) -> None:
    run = run_config_from_dict({"project": "P"}, "test")
    url = f"sqlite:///{tmp_path / 'p.db'}"
    for kwargs in ({"n_startup_trials": 3}, {"n_startup_trials": 4}):
        spec = {"name": "lightning_hpo.PFLPruner", "kwargs": kwargs}
        data = {"study_name": "s", "pruner": spec, "search_space": {"batch_size": SPACE}}
        opt = optimize_config_from_dict(data, run, "test")
        study = create_or_load_study(run, opt, TuneOptions(storage=url, heartbeat=None))
        assert optuna.load_study(study_name="s", storage=url).user_attrs[PRUNER_ATTR] == spec
    assert study.user_attrs[PRUNER_ATTR]["kwargs"] == {"n_startup_trials": 4}


def test_ranges_are_the_latest_ones_that_hold_the_best_value() -> None:
    old, new = FloatDistribution(0.1, 1.0), FloatDistribution(0.01, 0.1)
    best = create_trial(params={"x": 0.5}, distributions={"x": old}, value=0.0)
    later = create_trial(params={"x": 0.05}, distributions={"x": new}, value=1.0)
    later.number, best.number = 1, 0
    [x] = stored_params([best, later], best)
    assert (x.min, x.max) == (0.1, 1.0)  # the narrowed range does not hold the best value
    inside = create_trial(params={"x": 0.09}, distributions={"x": new}, value=0.0)
    inside.number = 2
    [x] = stored_params([best, later, inside], inside)
    assert (x.min, x.max, x.type, x.name) == (0.01, 0.1, "float", "x")
