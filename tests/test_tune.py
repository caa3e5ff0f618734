"""The tuner end to end: real (tiny) Lightning training inside an Optuna study on SQLite.

Each study trains a 16x2 MLP on 500 synthetic points for a few epochs on the CPU, so
a trial takes well under a second. The command-line tests run ``tune.py`` and
``train.py`` as a user would.
"""

from __future__ import annotations

import math
import re
import socket
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from lightning_hpo.attrs import HOST, INTERRUPTED, PFL_ATTR, PID, SURPLUS
from lightning_hpo.config.optimize import load_optimize_config, optimize_config_from_dict
from lightning_hpo.config.run import build, load_run_config, run_config_from_dict
from lightning_hpo.pruners.pfl import PFLPruner
from lightning_hpo.pruners.records import prefix_trial, stored_predictions
from lightning_hpo.training.results import load_result
from lightning_hpo.training.runs import train
from lightning_hpo.tuning.study import TuneOptions, counted, create_or_load_study
from lightning_hpo.tuning.tuner import finish, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
PROJECT = "Tiny"
LR_SPACE = {
    "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-1, "log": True}}
}
PFL = {
    "name": "lightning_hpo.PFLPruner",
    "kwargs": {"n_startup_trials": 2, "n_warmup_epochs": 1, "top_k": 2},
}

RUN_YAML = """\
project: Tiny
device: cpu
seeds: [1]
epochs: 2
batch_size: 128
data_config: {n: 500}
net_config: {nodes: 16, layers: 2}
"""

OPTIMIZE_YAML = """\
study_name: tiny_cli
trials: 3
seed: 1
pruner: null
search_space:
  optimizer_config:
    lr: {type: float, min: 1.0e-4, max: 1.0e-1, log: true}
"""


# --------------------------------------------------------------------------- helpers


def make_run(**overrides):
    """A tiny RunConfig, validated and resolved as load_run_config would."""
    data = {
        "project": PROJECT,
        "device": "cpu",
        "seeds": [1],
        "epochs": 3,
        "batch_size": 128,
        "data_config": {"n": 500},
        "net_config": {"nodes": 16, "layers": 2},
    }
    data.update(overrides)
    cfg = run_config_from_dict(data, "<test run>")
    build(cfg, "<test run>")
    return cfg


def make_opt(run, **overrides):
    data = {"study_name": "tiny", "trials": 3, "seed": 1, "pruner": None, "search_space": LR_SPACE}
    data.update(overrides)
    return optimize_config_from_dict(data, run, "<test optimize>")


def settings_for(tmp_path: Path) -> TuneOptions:
    return TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))


def steps(trial) -> list[int]:
    return sorted(trial.intermediate_values)


def seed_history(trial, seed: int) -> list[float]:
    result = load_result(Path(trial.user_attrs["run_dir"]) / str(seed))
    assert result is not None, f"trial {trial.number} seed {seed} has no result.json"
    return result.history


def events_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*"))


class StepPruner(optuna.pruners.BasePruner):
    """Deterministic stand-in: prunes odd-numbered trials once they reported step 1."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1 and trial.last_step is not None and trial.last_step >= 1


USER_MODULE = '''
import math

import torch
from torch.utils.data import TensorDataset

from lightning_hpo.builtin.data import synthetic_regression
from lightning_hpo.builtin.mlp import MLP

_calls = {"data": 0, "nets": 0}


def fails_first(n=500):
    """(train, val) like synthetic_regression, but the first call raises."""
    _calls["data"] += 1
    if _calls["data"] == 1:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return synthetic_regression(n=n)


class ExplodingNet(MLP):
    """An MLP whose first instance raises in the middle of training."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _calls["nets"] += 1
        self.explode = _calls["nets"] == 1

    def forward(self, x):
        if self.explode:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


def nan_targets(n=500):
    train, val = synthetic_regression(n=n)
    nan = lambda ds: TensorDataset(ds.tensors[0], torch.full_like(ds.tensors[1], math.nan))
    return nan(train), nan(val)
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch) -> str:
    """A user's own module (data factories, a network) importable under a unique name."""
    name = f"tune_user_{uuid.uuid4().hex[:10]}"
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


# --------------------------------------------------------------------------- a PFL study


def test_pfl_study_end_to_end(tmp_path: Path) -> None:
    run = make_run(epochs=3)
    opt = make_opt(run, trials=5, pruner=PFL)
    settings = settings_for(tmp_path)
    lines: list[str] = []
    # Two good trials, then a hopeless one PFL prunes (see the test below); the rest sampled.
    queued = create_or_load_study(run, opt, settings)
    for lr in (1.0e-2, 2.0e-2, 1.0e-4):
        queued.enqueue_trial({"optimizer_config_lr": lr})

    study = tune(run, opt, settings, echo=lines.append)

    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2  # n_startup_trials
    assert trials[2].state == TrialState.PRUNED
    assert lines[2].startswith("[3/5] trial 2 pruned at step 1 ")
    for t in trials:
        # Every epoch that ran reported once, at consecutive steps from 0.
        assert steps(t) == list(range(len(t.intermediate_values))), t.intermediate_values
        if t.state == TrialState.COMPLETE:
            assert len(t.intermediate_values) == 3
            assert t.value == t.intermediate_values[2]
        else:
            # PFL never prunes during warm-up (n_warmup_epochs=1: after the 2nd epoch at the earliest).
            assert 2 <= len(t.intermediate_values) < 3
        group = t.user_attrs["group_name"]
        assert group.endswith(f"[{t.number}]")
        assert t.user_attrs["run_dir"] == str(
            tmp_path / "runs" / f"{PROJECT}_Opt" / "tiny" / group
        )  # the study's own folder
        assert t.user_attrs["epochs"] == 3
        assert t.user_attrs["n_seeds"] == 1
        # The schedule PFL's band reads (T_max defaults to the run's epochs).
        cosine = "torch.optim.lr_scheduler.CosineAnnealingLR"
        assert t.user_attrs["lr_schedule"] == {"name": cosine, "T_max": 3, "interval": "epoch"}
        seed_dir = Path(t.user_attrs["run_dir"]) / "1"
        assert [p.name for p in Path(t.user_attrs["run_dir"]).iterdir()] == ["1"]
        assert len(events_files(seed_dir)) == 1, list(seed_dir.iterdir())
    # One folder per trial, nothing else.
    groups = sorted(
        p.name
        for p in (tmp_path / "runs" / f"{PROJECT}_Opt" / "tiny").iterdir()
        if p.name != ".study"
    )
    assert groups == sorted(t.user_attrs["group_name"] for t in trials)
    # One progress line per trial.
    assert len(lines) == 5
    assert [re.match(r"\[(\d+)/5\] trial (\d+) ", line).groups() for line in lines] == [
        (str(i + 1), str(i)) for i in range(5)
    ]

    printed: list[str] = []
    path = finish(run, opt, study, settings, echo=printed.append)
    assert path == tmp_path / "runs" / f"{PROJECT}_Opt" / "tiny" / "best.yaml"  # one per study
    assert "Best trial:" in printed
    assert f"  Number: {study.best_trial.number}" in printed

    best = load_run_config(path)
    assert best.optimizer_config["lr"] == study.best_params["optimizer_config_lr"]
    assert best.project == PROJECT and best.epochs == 3 and best.seeds == [1]
    assert best.net_config == run.net_config and best.data_config == run.data_config

    result = train(load_run_config(path, {"epochs": 1}), tmp_path / "train_runs")
    assert len(result.results) == 1
    assert len(result.results[0].history) == 1
    assert math.isfinite(result.mean)


def test_pfl_prunes_a_hopeless_trial_and_stores_its_decision(tmp_path: Path) -> None:
    # Two good trials finish first (n_startup_trials=2, the reference set, top_k=2); the third
    # learns 100x slower: after its second epoch (past n_warmup_epochs=1) its level is far
    # behind both, and so is its forecast (its level plus how they moved from the same epoch
    # to their end), so PFL prunes it there.
    run = make_run(epochs=3)
    opt = make_opt(run, trials=4, pruner=PFL)
    settings = settings_for(tmp_path)
    queued = create_or_load_study(run, opt, settings)
    for lr in (1.0e-2, 2.0e-2, 1.0e-4, 1.0e-2):  # the last repeats trial 0: judged, and kept
        queued.enqueue_trial({"optimizer_config_lr": lr})

    study = tune(run, opt, settings, echo=lambda line: None)

    trials = study.trials
    assert [t.params["optimizer_config_lr"] for t in trials] == [1.0e-2, 2.0e-2, 1.0e-4, 1.0e-2]
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    pruned = trials[2]
    assert steps(pruned) == [0, 1] and pruned.last_step == 1
    # The decision is stored on the trial (user attr "pfl", which the report and optuna-dashboard
    # read): pruned at step 1 as "worse", its forecast past the 2nd best completed value.
    record = pruned.user_attrs[PFL_ATTR]
    assert (record["step"], record["decision"], record["prune"]) == (1, "worse", True)
    level = (pruned.intermediate_values[0] + pruned.intermediate_values[1]) / 2
    moves = sorted(
        t.value - (t.intermediate_values[0] + t.intermediate_values[1]) / 2 for t in trials[:2]
    )
    assert record["level"] == pytest.approx(level)
    assert record["predicted"] == pytest.approx(level + (moves[0] + moves[1]) / 2)
    assert record["threshold"] == max(t.value for t in trials[:2])
    assert record["probability"] < 0.05 and record["neighbours"] == 2
    assert stored_predictions(pruned) == {1: record["predicted"]}
    # The start-up trials were never judged; trial 3 was, every epoch past warm-up, and kept.
    assert [PFL_ATTR in t.user_attrs for t in trials[:2]] == [False, False]
    assert list(stored_predictions(trials[3])) == [1, 2]
    assert trials[3].user_attrs[PFL_ATTR]["prune"] is False
    # Replayed with what the study held then (trials 0 and 1 complete), the verdict is "worse".
    then = optuna.create_study(direction="minimize")
    then.add_trials(trials[:2])
    decision = PFLPruner(**PFL["kwargs"]).evaluate(then, prefix_trial(pruned, 1))
    assert (decision.prune, decision.reason) == (True, "worse")
    assert max(t.value for t in trials[:2]) < pruned.intermediate_values[1]


def test_retraining_best_yaml_reproduces_the_best_trial(tmp_path: Path) -> None:
    """best.yaml, trained again with the study's seeds and epochs (two seeds, so fused, as
    in the trials), ends at exactly the best trial's value.

    Exact, not approximate: on the CPU the retrained run repeats the trial's arithmetic
    operation for operation (same initial weights from the seeds, same batch order, same
    learning rate, which best.yaml stores as the float the sampler drew), and both means
    are statistics.fmean over the same seed order.
    """
    run = make_run(seeds=[1, 2], epochs=3)
    opt = make_opt(run, trials=3)
    settings = settings_for(tmp_path)
    study = tune(run, opt, settings, echo=lambda line: None)
    best = study.best_trial
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({t.value for t in study.trials}) == 3  # a real choice among different results

    path = finish(run, opt, study, settings, echo=lambda line: None)
    cfg = load_run_config(path)
    assert cfg.optimizer_config["lr"] == best.params["optimizer_config_lr"]
    assert (cfg.seeds, cfg.epochs) == ([1, 2], 3)
    retrained = train(cfg, tmp_path / "retrain")

    assert [r.together for r in retrained.results] == [2, 2]  # fused, as the trial was
    assert retrained.mean == best.value
    for r in retrained.results:
        assert r.history == seed_history(best, r.seed)


def test_stand_in_pruner_prunes_through_the_lightning_callback(tmp_path: Path) -> None:
    run = make_run(epochs=3)
    opt = make_opt(run, trials=4, pruner={"name": f"{StepPruner.__module__}.StepPruner"})
    assert isinstance(opt.make_pruner(), StepPruner)

    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)

    for t in study.trials:
        if t.number % 2:
            assert t.state == TrialState.PRUNED, t.number
            assert t.last_step == 1
            assert steps(t) == [0, 1]
            assert t.value == t.intermediate_values[1]  # Optuna keeps a pruned trial's last report
        else:
            assert t.state == TrialState.COMPLETE, t.number
            assert steps(t) == [0, 1, 2]
        # Pruned or not, the run folder holds its TensorBoard events.
        assert len(events_files(Path(t.user_attrs["run_dir"]) / "1")) == 1
    assert len(study.trials) == 4


def test_a_fused_trial_reports_the_seed_mean_once_per_epoch(tmp_path: Path) -> None:
    run = make_run(seeds=[1, 2], epochs=3)
    opt = make_opt(run, trials=1)

    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)

    (t,) = study.trials
    assert t.state == TrialState.COMPLETE
    assert steps(t) == [0, 1, 2]  # step = epoch, whatever the number of seeds
    assert (t.user_attrs["n_seeds"], t.user_attrs["epochs"]) == (2, 3)
    first, second = seed_history(t, 1), seed_history(t, 2)
    assert first != second
    for epoch in range(3):
        assert t.intermediate_values[epoch] == pytest.approx(
            statistics.fmean([first[epoch], second[epoch]]), rel=1e-6
        )
    assert t.value == pytest.approx(statistics.fmean([first[-1], second[-1]]))
    for seed in (1, 2):
        assert len(events_files(Path(t.user_attrs["run_dir"]) / str(seed))) == 1


def test_a_trial_that_cannot_fuse_reports_its_first_seed(tmp_path: Path, user_components) -> None:
    run = make_run(seeds=[1, 2], epochs=3, net="user_components.BatchNormNet", net_config={})
    opt = make_opt(
        run,
        trials=1,
        search_space={
            "optimizer_config": {"lr": {"type": "float", "min": 1.0e-3, "max": 1.0e-2, "log": True}}
        },
    )

    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)

    (t,) = study.trials
    assert t.state == TrialState.COMPLETE
    assert steps(t) == [0, 1, 2]
    assert [t.intermediate_values[e] for e in range(3)] == pytest.approx(
        seed_history(t, 1), rel=1e-6
    )
    assert t.value == pytest.approx(
        statistics.fmean([seed_history(t, 1)[-1], seed_history(t, 2)[-1]])
    )


def test_sanity_check_never_reports(tmp_path: Path) -> None:
    run = make_run(epochs=2)
    opt = make_opt(run, trials=1)

    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)

    (t,) = study.trials
    assert steps(t) == [0, 1]  # exactly one report per epoch
    # Were the sanity check reported, step 0 would hold its value (Optuna keeps the first).
    assert [t.intermediate_values[0], t.intermediate_values[1]] == seed_history(t, 1)


def test_train_loss_metric_reports_every_epoch(tmp_path: Path) -> None:
    run = make_run(epochs=3)
    opt = make_opt(run, trials=1, metric="train_loss")
    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)
    (t,) = study.trials
    assert t.state == TrialState.COMPLETE
    assert steps(t) == [0, 1, 2]


def test_maximize_val_r2(tmp_path: Path) -> None:
    run = make_run(epochs=2)
    opt = make_opt(run, trials=3, metric="val_r2", direction="maximize")

    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)

    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    values = [t.value for t in study.trials]
    assert all(v <= 1.0 for v in values)
    assert len(set(values)) == 3
    assert study.best_value == max(values)
    assert study.best_trial.number == values.index(max(values))
    for t in study.trials:
        assert t.value == t.intermediate_values[1] == seed_history(t, 1)[-1]


# --------------------------------------------------------------------------- totals, resume


def test_resume_runs_only_the_missing_trials(tmp_path: Path) -> None:
    run_path, opt_path = tmp_path / "run.yaml", tmp_path / "optimize.yaml"
    run_path.write_text(RUN_YAML)
    opt_path.write_text(OPTIMIZE_YAML.replace("trials: 3", "trials: 4"))
    run = load_run_config(run_path)
    settings = settings_for(tmp_path)

    first: list[str] = []
    study = tune(run, load_optimize_config(opt_path, run, trials=2), settings, echo=first.append)
    assert [t.number for t in study.trials] == [0, 1]
    assert len(first) == 2

    second: list[str] = []
    study = tune(run, load_optimize_config(opt_path, run), settings, echo=second.append)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [line.split(" ", 3)[:3] for line in second] == [
        ["[3/4]", "trial", "2"],
        ["[4/4]", "trial", "3"],
    ]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)

    third: list[str] = []
    study = tune(run, load_optimize_config(opt_path, run), settings, echo=third.append)
    assert third == []
    assert [t.number for t in study.trials] == [0, 1, 2, 3]

    # The command line on the finished study: nothing new, just the Best trial block.
    proc = subprocess.run(
        [sys.executable, str(REPO / "tune.py"), "--run-config", str(run_path), "--optimize-config", str(opt_path),
         "--storage", settings.storage, "--output", settings.output],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"^\[\d+/\d+\] trial", proc.stdout, re.M), proc.stdout
    best = study.best_trial
    assert f"Best trial:\n  Number: {best.number}\n" in proc.stdout
    assert "  Params:\n    optimizer_config_lr: " in proc.stdout
    assert f"  Path: {best.user_attrs['run_dir']}" in proc.stdout
    assert len(optuna.load_study(study_name="tiny_cli", storage=settings.storage).trials) == 4


def test_interrupted_trial_does_not_count(tmp_path: Path) -> None:
    run = make_run(epochs=2)
    opt = make_opt(run, trials=3)
    settings = settings_for(tmp_path)
    study = create_or_load_study(run, opt, settings)
    dists = opt.distributions()
    study.add_trial(
        create_trial(value=1.0, params={"optimizer_config_lr": 1e-3}, distributions=dists)
    )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"optimizer_config_lr": 2e-3},
            distributions=dists,
            system_attrs={INTERRUPTED: True},
        )
    )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"optimizer_config_lr": 3e-3},
            distributions=dists,
            user_attrs={"fail_reason": "boom"},
        )
    )
    # A real failure counts; an interrupted trial does not.
    assert counted(study.get_trials()) == 2

    lines: list[str] = []
    study = tune(run, opt, settings, echo=lines.append)

    trials = study.trials
    assert len(trials) == 4
    assert trials[3].state == TrialState.COMPLETE
    assert counted(trials) == 3
    assert len(lines) == 1 and lines[0].startswith("[3/3] trial 3 ")


def test_dead_worker_trial_is_retried_and_the_total_reached(tmp_path: Path) -> None:
    run = make_run(epochs=2)
    opt = make_opt(run, trials=2)
    settings = settings_for(tmp_path)
    study = create_or_load_study(run, opt, settings)
    study.add_trial(
        create_trial(
            value=1.0, params={"optimizer_config_lr": 1e-3}, distributions=opt.distributions()
        )
    )
    # A trial left RUNNING by a worker on this host whose process is gone.
    orphan = study.ask(opt.distributions())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    study._storage.set_trial_system_attr(orphan._trial_id, HOST, socket.gethostname())
    study._storage.set_trial_system_attr(orphan._trial_id, PID, gone.pid)

    lines: list[str] = []
    study = tune(run, opt, settings, echo=lines.append)

    trials = study.trials
    assert trials[1].state == TrialState.FAIL  # the orphan, marked FAIL
    assert not [t.number for t in trials if t.state == TrialState.WAITING]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[1].params
    assert counted(trials) == 2


def test_resumed_and_parallel_samplers_do_not_repeat_parameters(tmp_path: Path) -> None:
    # No training needed: ask the way two processes (or a restarted one) would.
    run = make_run()
    opt = make_opt(run, trials=4, sampler={"name": "optuna.samplers.TPESampler"})
    settings = settings_for(tmp_path)
    settings.heartbeat = None
    first = create_or_load_study(run, opt, settings)
    for value in (1.0, 2.0):
        trial = first.ask()
        opt.suggest(trial, run)
        first.tell(trial, value)
    # A restart resumes the study: its next trial should not replay trial 0.
    resumed = create_or_load_study(run, opt, settings)
    trial = resumed.ask()
    opt.suggest(trial, run)
    # A second worker process starts at the same time.
    other = create_or_load_study(run, opt, settings)
    parallel = other.ask()
    opt.suggest(parallel, run)
    lrs = [
        t.params["optimizer_config_lr"]
        for t in optuna.load_study(study_name="tiny", storage=settings.storage).trials
    ]
    assert len(lrs) == 4
    assert len(set(lrs)) == 4, lrs


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("where", ["data", "net"])
def test_training_error_fails_the_trial_and_the_study_goes_on(
    where: str, tmp_path: Path, user_module: str
) -> None:
    component = (
        {"data": f"{user_module}.fails_first"}
        if where == "data"
        else {"net": f"{user_module}.ExplodingNet"}
    )
    run = make_run(epochs=2, **component)
    opt = make_opt(run, trials=3)
    lines: list[str] = []

    study = tune(run, opt, settings_for(tmp_path), echo=lines.append)

    trials = study.trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "RuntimeError: CUDA out of memory" in trials[0].user_attrs["fail_reason"]
    assert counted(trials) == 3
    assert "FAILED: RuntimeError: CUDA out of memory" in lines[0]
    assert len(lines) == 3


@pytest.mark.parametrize(
    ("pruner", "state"),
    [(None, TrialState.FAIL), (PFL, TrialState.PRUNED)],
    ids=["nop", "pfl"],
)
def test_nan_loss_never_completes(pruner, state, tmp_path: Path, user_module: str) -> None:
    run = make_run(epochs=2, data=f"{user_module}.nan_targets")
    opt = make_opt(run, trials=1, pruner=pruner)

    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)

    (t,) = study.trials
    assert t.state == state
    assert t.value is None
    if state == TrialState.FAIL:
        assert "nan" in t.user_attrs["fail_reason"].lower()
        assert steps(t) == [0, 1]
    else:
        assert t.last_step == 0  # PFL prunes a non-finite value at once, even during start-up
    assert all(math.isnan(v) for v in t.intermediate_values.values())


# --------------------------------------------------------------------------- command line


def _write_cli_configs(tmp_path: Path) -> tuple[Path, Path]:
    run_path, opt_path = tmp_path / "run.yaml", tmp_path / "optimize.yaml"
    run_path.write_text(RUN_YAML)
    opt_path.write_text(OPTIMIZE_YAML)
    return run_path, opt_path


def _cli(
    tmp_path: Path, script: str, *args: str, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_tune_then_train_the_best_config(tmp_path: Path) -> None:
    run_path, opt_path = _write_cli_configs(tmp_path)
    db = tmp_path / "study" / "s.db"

    proc = _cli(tmp_path, "tune.py", "--run-config", str(run_path), "--optimize-config", str(opt_path),
                "--storage", f"sqlite:///{db}", "--output", str(tmp_path / "runs"))  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    # Not a terminal (a pipe): the plain lines alone, no live display (tests/test_live.py).
    assert "\x1b" not in proc.stdout + proc.stderr
    assert not re.search(r"elapsed|ETA|running \d", proc.stdout), proc.stdout
    trial_lines = [
        line for line in proc.stdout.splitlines() if re.match(r"\[\d+/3\] trial \d+ ", line)
    ]
    assert [line.split()[:3] for line in trial_lines] == [
        ["[1/3]", "trial", "0"],
        ["[2/3]", "trial", "1"],
        ["[3/3]", "trial", "2"],
    ]
    study = optuna.load_study(study_name="tiny_cli", storage=f"sqlite:///{db}")
    best = study.best_trial
    assert f"Best trial:\n  Number: {best.number}\n  Value: " in proc.stdout
    best_yaml = tmp_path / "runs" / "Tiny_Opt" / "tiny_cli" / "best.yaml"
    assert best_yaml.is_file()
    assert f"Best config: {best_yaml}" in proc.stdout
    assert load_run_config(best_yaml).optimizer_config["lr"] == best.params["optimizer_config_lr"]

    trained = _cli(
        tmp_path,
        "train.py",
        "--config",
        str(best_yaml),
        "--epochs",
        "1",
        "--output",
        str(tmp_path / "train_runs"),
    )
    assert trained.returncode == 0, trained.stderr
    assert "\x1b" not in trained.stdout + trained.stderr
    assert not re.search(r"elapsed|ETA|epoch \d", trained.stdout), trained.stdout
    assert re.search(r"^seed 1: final val_loss \S+ .* after 1 epochs", trained.stdout, re.M), (
        trained.stdout
    )
    assert len(list((tmp_path / "train_runs" / PROJECT).glob("*/1/events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_cli_workers_reach_exactly_the_total(tmp_path: Path) -> None:
    run_path, opt_path = _write_cli_configs(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"

    # Trials of a second or more: a worker that starts a moment after the other still gets one.
    proc = _cli(tmp_path, "tune.py", "--run-config", str(run_path), "--optimize-config", str(opt_path),
                "--storage", url, "--output", str(tmp_path / "runs"), "--workers", "2",
                "--epochs", "20")  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    trials = optuna.load_study(study_name="tiny_cli", storage=url).trials
    # Two workers that ask for the last slot at once leave one trial more, which runs
    # nothing and does not count (README: the total is shared).
    ran = [t for t in trials if not t.system_attrs.get(SURPLUS)]
    assert [t.number for t in ran] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in ran)
    assert all(t.state == TrialState.FAIL and not t.intermediate_values for t in trials[3:])
    assert len({t.system_attrs[PID] for t in ran}) == 2  # two worker processes shared the work
    assert len(re.findall(r"^\[\d+/3\] trial \d+ ", proc.stdout, re.M)) == 3
    assert "\x1b" not in proc.stdout + proc.stderr  # plain lines (no terminal), each once
    assert proc.stdout.count("Best trial:") == 1
    assert (tmp_path / "runs" / "Tiny_Opt" / "tiny_cli" / "best.yaml").is_file()


# --------------------------------------------------------------------------- samplers and interrupts


def test_a_seeded_grid_study_visits_every_point_once(tmp_path, quiet) -> None:
    # GridSampler derives its order from its seed: it must not be reseeded per trial.
    run = make_run(epochs=1)
    space = {
        "optimizer_config": {
            "lr": {
                "type": "categorical",
                "choices": [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2],
            }
        }
    }
    opt = make_opt(
        run, trials=6, sampler={"name": "optuna.samplers.GridSampler"}, search_space=space
    )
    study = tune(run, opt, settings_for(tmp_path), echo=lambda line: None)
    lrs = [t.params["optimizer_config_lr"] for t in study.trials]
    assert sorted(lrs) == sorted(space["optimizer_config"]["lr"]["choices"])


def test_a_seed_in_the_sampler_kwargs_still_varies_the_suggestions(tmp_path) -> None:
    run = make_run()
    opt = make_opt(
        run, trials=4, sampler={"name": "optuna.samplers.RandomSampler", "kwargs": {"seed": 3}}
    )
    study = create_or_load_study(run, opt, settings_for(tmp_path))
    lrs = [opt.suggest(study.ask(), run).optimizer_config["lr"] for _ in range(4)]
    assert len(set(lrs)) == 4
    again = create_or_load_study(
        run,
        make_opt(
            run,
            trials=4,
            study_name="again",
            sampler={"name": "optuna.samplers.RandomSampler", "kwargs": {"seed": 3}},
        ),
        settings_for(tmp_path),
    )
    assert [
        opt.suggest(again.ask(), run).optimizer_config["lr"] for _ in range(4)
    ] == lrs  # and stays reproducible


def test_an_interrupt_before_training_marks_the_trial_interrupted(
    tmp_path, monkeypatch, quiet
) -> None:
    import signal

    run = make_run()
    opt = make_opt(run, trials=2)

    def interrupted(self, trial, base):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(opt), "suggest", interrupted)
    handlers = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt):
        tune(run, opt, settings_for(tmp_path), echo=lambda line: None)
    assert (
        signal.getsignal(signal.SIGINT),
        signal.getsignal(signal.SIGTERM),
    ) == handlers  # restored for the caller
    trials = optuna.load_study(study_name="tiny", storage=settings_for(tmp_path).storage).trials
    # Interrupted, not counted, and its parameters queued for the next run to continue.
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].system_attrs.get(INTERRUPTED) is True and counted(trials) == 0
    assert trials[1].user_attrs["retry_of"] == trials[0].number
