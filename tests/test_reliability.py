"""Reliability: what a study looks like after signals, dead workers, failing trials and
concurrent writers, and that secrets and YAML tags stay harmless.

Most tests run the real command lines (``python tune.py`` / ``python train.py``) on small
configs written to ``tmp_path`` and then read the study back from its storage. A run that
must be interrupted mid-trial trains long (``--epochs 2000`` on 2000 points); the test
waits until the trial has reported an epoch, so the signal lands inside training.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from services import (  # noqa: F401 - fixtures
    TRAIN,
    mysql_url,
    open_study,
    optimize_yaml,
    postgres_scheme,
    postgres_url,
    run,
    start,
    stop,
    tune_args,
    wait_for,
)

from lightning_hpo.attrs import (
    FAIL_REASON,
    HOST,
    INTERRUPTED,
    PID,
    RETRIED_FROM,
    STALE,
    STARTED,
    SURPLUS,
)
from lightning_hpo.storage.connect import open_storage
from lightning_hpo.storage.signed import process_start
from lightning_hpo.training.results import RESULT_FILE
from lightning_hpo.training.runs import train
from lightning_hpo.tuning.study import TuneOptions, counted, create_or_load_study
from lightning_hpo.tuning.tuner import tune

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = "s"
LONG_EPOCHS = (
    "2000"  # with n=2000 a trial would train for a minute or more: it is always caught mid-run
)
EXIT_TIMEOUT = 60  # seconds a signalled process may take to clean up


def finished(trials) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def states(trials, state: TrialState) -> list:
    return [t for t in trials if t.state == state]


def write_configs(
    folder: Path, small_config_dict, trials: int, **run_overrides
) -> tuple[Path, Path]:
    """A small run config (2000 points, so long runs are long) and an optimize config in ``folder``."""
    from lightning_hpo.config.yamlio import dump_yaml

    run_cfg, opt = folder / "run.yaml", folder / "optimize.yaml"
    dump_yaml(
        small_config_dict(**({"project": "Rel", "data_config": {"n": 2000}} | run_overrides)),
        run_cfg,
    )
    opt.write_text(optimize_yaml(STUDY, trials))
    return run_cfg, opt


def start_long_trial(
    folder: Path, run_cfg: Path, opt: Path, url: str, *extra: str
) -> subprocess.Popen:
    """Start tune.py with long trials and return once a trial is RUNNING and has reported an epoch."""
    log = folder / "first.log"
    proc = start(
        tune_args(run_cfg, opt, url, folder / "runs", "--epochs", LONG_EPOCHS, *extra), folder, log
    )
    try:
        # The study exists once a run folder does; opening it earlier could race its creation.
        wait_for(
            lambda: any((folder / "runs").rglob("config.yaml")),
            120,
            "the first trial's run folder",
            proc,
            log,
        )
        study = open_study(url, STUDY)
        wait_for(
            lambda: any(
                t.intermediate_values
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            ),
            120,
            "a RUNNING trial's first epoch",
            proc,
            log,
        )
    except BaseException:
        stop(proc)
        raise
    return proc


def rerun(
    folder: Path, run_cfg: Path, opt: Path, url: str, *extra: str
) -> subprocess.CompletedProcess:
    proc = run(tune_args(run_cfg, opt, url, folder / "runs", "--epochs", "2", *extra), folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def assert_total_reached(trials: list, total: int) -> None:
    """The study holds ``total`` trials that count, all finished (nothing here fails for good)."""
    assert not states(trials, TrialState.RUNNING)
    assert counted(trials) == total
    assert finished(trials) == total


# --------------------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_fails_the_running_trial_and_a_rerun_reaches_the_total(
    sig, tmp_path, small_config_dict
) -> None:
    run_cfg, opt = write_configs(tmp_path, small_config_dict, trials=2)
    url = f"sqlite:///{tmp_path}/study.db"
    proc = start_long_trial(tmp_path, run_cfg, opt, url)
    victim = open_study(url, STUDY).get_trials(states=(TrialState.RUNNING,))[0]
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=EXIT_TIMEOUT)
    finally:
        stop(proc)
    log = (tmp_path / "first.log").read_text()
    assert code == 128 + sig, (
        log
    )  # 130 for SIGINT, 143 for SIGTERM, as shells and schedulers read them
    assert "Traceback" not in log

    trials = open_study(url, STUDY).get_trials()
    assert not states(trials, TrialState.RUNNING)
    stopped = trials[victim.number]
    assert stopped.state == TrialState.FAIL
    assert stopped.system_attrs.get(INTERRUPTED) is True
    assert counted(trials) == victim.number  # the interrupted trial does not count

    rerun(tmp_path, run_cfg, opt, url)
    trials = open_study(url, STUDY).get_trials()
    assert_total_reached(trials, 2)
    assert len(trials) == 3  # the two that count and the interrupted one


# --------------------------------------------------------------------------- dead workers


def kill_mid_trial(folder: Path, run_cfg: Path, opt: Path, url: str, *extra: str):
    """kill -9 tune.py mid-trial; return the trial it left RUNNING."""
    proc = start_long_trial(folder, run_cfg, opt, url, *extra)
    proc.kill()
    proc.wait(timeout=EXIT_TIMEOUT)
    running = open_study(url, STUDY).get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1
    victim = running[0]
    assert (
        victim.system_attrs[PID] == proc.pid and victim.system_attrs[HOST] == socket.gethostname()
    )
    return victim


def retries_of(trials, victim) -> list:
    return [
        t
        for t in trials
        if t.number > victim.number
        and (
            t.user_attrs.get("retry_of") == victim.number
            or t.system_attrs.get(RETRIED_FROM) == victim.number
        )
    ]


@dataclass
class AfterDeath:
    """A study after a worker was killed mid-trial and tune.py was run again."""

    victim: optuna.trial.FrozenTrial
    rerun_stdout: str
    trials: list
    live: optuna.trial.FrozenTrial | None = (
        None  # a RUNNING trial of a live process, if one was added
    )


def assert_failed_stale_and_retried_once(after: AfterDeath) -> None:
    """The rerun marked the dead worker's trial FAIL (stale) and ran its parameters once more."""
    victim, trials = after.victim, after.trials
    assert f"trial {victim.number} was left RUNNING by a worker that died" in after.rerun_stdout
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL and dead.system_attrs.get(STALE) is True
    retries = retries_of(trials, victim)
    assert len(retries) == 1
    assert retries[0].params == victim.params and retries[0].state == TrialState.COMPLETE


@pytest.fixture(scope="module")
def killed_on_sqlite(tmp_path_factory, small_config_dict) -> AfterDeath:
    folder = tmp_path_factory.mktemp("kill9_sqlite")
    run_cfg, opt = write_configs(folder, small_config_dict, trials=2)
    url = f"sqlite:///{folder}/study.db"
    victim = kill_mid_trial(folder, run_cfg, opt, url, "--heartbeat", "1")
    proc = rerun(folder, run_cfg, opt, url, "--heartbeat", "1")
    return AfterDeath(victim, proc.stdout, open_study(url, STUDY).get_trials())


@pytest.mark.slow
def test_kill_9_with_heartbeat_fails_the_trial_and_retries_it_once(killed_on_sqlite) -> None:
    assert not states(killed_on_sqlite.trials, TrialState.RUNNING)
    assert_failed_stale_and_retried_once(killed_on_sqlite)


@pytest.mark.slow
def test_kill_9_with_heartbeat_rerun_reaches_the_total(killed_on_sqlite) -> None:
    assert_total_reached(killed_on_sqlite.trials, 2)


@pytest.mark.slow
def test_heartbeat_retries_a_dead_trial_of_another_host_and_reaches_the_total(
    tmp_path, small_config_dict
) -> None:
    run_cfg, opt = write_configs(tmp_path, small_config_dict, trials=2)
    url = f"sqlite:///{tmp_path}/study.db"
    victim = kill_mid_trial(tmp_path, run_cfg, opt, url, "--heartbeat", "1")
    # As if the worker had run on another machine: only its silent heartbeat tells it is dead.
    open_storage(url, heartbeat=None).set_trial_system_attr(victim._trial_id, HOST, "another-host")

    rerun(tmp_path, run_cfg, opt, url, "--heartbeat", "1")
    trials = open_study(url, STUDY).get_trials()
    assert trials[victim.number].state == TrialState.FAIL
    # Not judged by a pid of another machine: by its silence (Optuna's heartbeat or ours).
    reason = trials[victim.number].user_attrs[FAIL_REASON]
    assert "heartbeat" in reason and "this host" not in reason
    retries = retries_of(trials, victim)
    assert (
        len(retries) == 1
        and retries[0].params == victim.params
        and retries[0].state == TrialState.COMPLETE
    )
    assert_total_reached(trials, 2)


@pytest.fixture(scope="module")
def killed_on_journal(tmp_path_factory, small_config_dict) -> AfterDeath:
    folder = tmp_path_factory.mktemp("kill9_journal")
    run_cfg, opt = write_configs(folder, small_config_dict, trials=3)
    url = f"journal:{folder}/j.log"
    victim = kill_mid_trial(folder, run_cfg, opt, url)
    # A trial that another, live worker on this host is running.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        study = open_study(url, STUDY)
        live = study.ask({"optimizer_config_lr": FloatDistribution(1e-4, 1e-2, log=True)})
        # Signed as the sleeper's: its host, PID and start time.
        for key, value in {
            HOST: socket.gethostname(),
            PID: sleeper.pid,
            STARTED: process_start(sleeper.pid),
        }.items():
            study._storage.set_trial_system_attr(live._trial_id, key, value)
        proc = rerun(folder, run_cfg, opt, url)
        assert sleeper.poll() is None
    finally:
        stop(sleeper)
    trials = open_study(url, STUDY).get_trials()
    return AfterDeath(victim, proc.stdout, trials, trials[live.number])


@pytest.mark.slow
def test_journal_rerun_fails_a_dead_pid_and_retries_it_once(killed_on_journal) -> None:
    assert_failed_stale_and_retried_once(killed_on_journal)


@pytest.mark.slow
def test_journal_rerun_leaves_a_live_workers_trial_alone(killed_on_journal) -> None:
    live, trials = killed_on_journal.live, killed_on_journal.trials
    assert f"trial {live.number} was left" not in killed_on_journal.rerun_stdout
    assert [t.number for t in states(trials, TrialState.RUNNING)] == [live.number]
    assert STALE not in live.system_attrs and retries_of(trials, live) == []


@pytest.mark.slow
def test_journal_rerun_reaches_the_total(killed_on_journal) -> None:
    trials = killed_on_journal.trials
    # The live worker's trial counts; the other two finished.
    assert counted(trials) == 3 and finished(trials) == 2


# --------------------------------------------------------------------------- failing trials

USER_MODULE = '''
import torch
from torch.utils.data import TensorDataset

from lightning_hpo.builtin.data import synthetic_regression
from lightning_hpo.builtin.mlp import MLP


def inf_val(n=300):
    """Finite training data, validation targets at +inf: val_loss is inf every epoch."""
    train, val = synthetic_regression(n=n)
    x, y = val.tensors
    return train, TensorDataset(x, torch.full_like(y, float("inf")))


BUILT = 0


class OOMNet(MLP):
    """An MLP whose first instance in this process runs out of (CUDA) memory in training."""

    def __init__(self, *args, **kwargs):
        global BUILT
        super().__init__(*args, **kwargs)
        BUILT += 1
        self.oom = BUILT == 1

    def forward(self, x):
        if self.oom and self.training:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``rel_user``: a user's own data and network module, freshly imported for each test."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "rel_user.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "rel_user", raising=False)
    yield folder
    sys.modules.pop("rel_user", None)


def tiny_study(small_config, tmp_path, trials: int, pruner: str | None = None, **run_overrides):
    """(run config, optimize config, settings) for an in-process study of ``trials`` tiny trials."""
    from lightning_hpo.config.optimize import optimize_config_from_dict

    run_cfg = small_config(project="Rel", data_config={"n": 300}, **run_overrides)
    space = {
        "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}}
    }
    opt = optimize_config_from_dict(
        {"study_name": STUDY, "trials": trials, "seed": 1, "pruner": pruner, "search_space": space},
        run_cfg,
        "<test>",
    )
    settings = TuneOptions(
        storage=f"sqlite:///{tmp_path}/study.db", output=str(tmp_path / "runs"), heartbeat=None
    )
    return run_cfg, opt, settings


@pytest.mark.parametrize("pruner", [None, "lightning_hpo.PFLPruner"], ids=["no-pruner", "PFL"])
def test_inf_loss_never_completes(pruner, user_module, small_config, tmp_path, quiet) -> None:
    run_cfg, opt, settings = tiny_study(small_config, tmp_path, 2, pruner, data="rel_user.inf_val")
    lines: list[str] = []
    trials = tune(run_cfg, opt, settings, echo=lines.append).get_trials()
    assert len(trials) == 2 and len(lines) == 2
    for t in trials:
        assert t.state in (TrialState.PRUNED, TrialState.FAIL), t
    if pruner:  # PFL prunes a non-finite value at its first report
        assert [(t.state, t.last_step) for t in trials] == [(TrialState.PRUNED, 0)] * 2
    else:  # the objective refuses to return inf
        assert [t.user_attrs["fail_reason"] for t in trials] == ["val_loss ended at inf"] * 2


def test_out_of_memory_fails_its_trial_with_the_reason_and_the_study_goes_on(
    user_module, small_config, tmp_path, quiet
) -> None:
    run_cfg, opt, settings = tiny_study(small_config, tmp_path, 3, net="rel_user.OOMNet")
    lines: list[str] = []
    trials = tune(run_cfg, opt, settings, echo=lines.append).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert (
        trials[0].user_attrs["fail_reason"]
        == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert "FAILED: RuntimeError: CUDA out of memory" in lines[0]
    assert counted(trials) == 3


def test_a_queued_trial_runs_within_the_total(small_config, tmp_path, quiet) -> None:
    run_cfg, opt, settings = tiny_study(small_config, tmp_path, 3)
    create_or_load_study(run_cfg, opt, settings).enqueue_trial({"optimizer_config_lr": 1.0e-3})
    trials = tune(run_cfg, opt, settings, echo=lambda line: None).get_trials()
    assert (
        trials[0].params == {"optimizer_config_lr": 1.0e-3}
        and trials[0].state == TrialState.COMPLETE
    )
    assert_total_reached(trials, 3)


# --------------------------------------------------------------------------- concurrent writers

WORKER = """
import sys

import optuna

from lightning_hpo.storage.connect import open_storage

url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=optuna.samplers.RandomSampler())


def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    for step in range(3):
        trial.report(x + step, step)
    return x


study.optimize(objective, n_trials=n)
"""

WORKERS, PER_WORKER = 4, 25


def concurrent_workers(tmp_path: Path, url: str, small_config) -> None:
    """Create the study once, then 4 processes × 25 trivial trials on it; check the result."""
    from lightning_hpo.config.optimize import optimize_config_from_dict

    run_cfg = small_config()
    opt = optimize_config_from_dict(
        {
            "study_name": STUDY,
            "trials": 100,
            "search_space": {
                "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2}}
            },
        },
        run_cfg,
        "<test>",
    )
    create_or_load_study(run_cfg, opt, TuneOptions(storage=url, heartbeat=None))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, STUDY, str(PER_WORKER)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0] * WORKERS, outputs

    trials = open_study(url, STUDY).get_trials()
    assert sorted(t.number for t in trials) == list(range(WORKERS * PER_WORKER))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # each trial holds exactly its own three steps
        x = t.params["x"]
        assert t.intermediate_values == {0: x, 1: x + 1, 2: x + 2}
        assert t.value == x


def test_concurrent_workers_on_sqlite(tmp_path, small_config) -> None:
    concurrent_workers(tmp_path, f"sqlite:///{tmp_path}/study.db", small_config)


def test_concurrent_workers_on_postgresql(tmp_path, small_config, postgres_url) -> None:
    concurrent_workers(tmp_path, postgres_url, small_config)


def test_concurrent_workers_on_mariadb(tmp_path, small_config, mysql_url) -> None:
    concurrent_workers(tmp_path, mysql_url, small_config)


def test_concurrent_workers_on_a_journal_file(tmp_path, small_config) -> None:
    concurrent_workers(tmp_path, f"journal:{tmp_path}/j.log", small_config)


def eight_at_once(tmp_path: Path, write_config, url: str) -> list:
    """8 tune.py processes started together on a fresh storage; returns the study's trials."""
    run_cfg = write_config("run.yaml", project="Rel", data_config={"n": 300})
    opt = tmp_path / "optimize.yaml"
    opt.write_text(optimize_yaml(STUDY, 8))
    procs = [
        subprocess.Popen(
            tune_args(run_cfg, opt, url, tmp_path / "runs"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert [p.returncode for p in procs] == [0] * 8, "\n-----\n".join(outputs)
    trials = open_study(url, STUDY).get_trials()
    assert not states(trials, TrialState.RUNNING)
    # A process that lost the race for the last slot leaves a FAIL trial marked surplus, never run.
    surplus = [t for t in trials if t.system_attrs.get(SURPLUS)]
    assert finished(trials) == 8 and counted(trials) == 8 and len(trials) == 8 + len(surplus)
    assert all(t.state == TrialState.FAIL and not t.intermediate_values for t in surplus)

    # Every trial trained in its own folder, with its own TensorBoard log and checkpoint.
    folders = [Path(t.user_attrs["run_dir"]) for t in trials if t not in surplus]
    assert len(set(folders)) == 8
    on_disk = sorted(
        p for p in (tmp_path / "runs" / "Rel_Opt" / STUDY).iterdir() if p.is_dir()
    )  # the study's own folder
    assert on_disk == sorted(folders)
    for folder in folders:
        assert len(list(folder.glob("1/events.out.tfevents.*"))) == 1, sorted(folder.rglob("*"))
        assert (folder / "1" / "checkpoints" / "last.ckpt").is_file()
    return trials


@pytest.mark.slow
def test_eight_tune_processes_at_once_on_sqlite(tmp_path, write_config) -> None:
    eight_at_once(tmp_path, write_config, f"sqlite:///{tmp_path}/study.db")


@pytest.mark.slow
def test_eight_tune_processes_at_once_on_postgresql(tmp_path, write_config, postgres_url) -> None:
    eight_at_once(tmp_path, write_config, postgres_url)


# --------------------------------------------------------------------------- train.py --resume


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _readable(path: Path) -> bool:
    try:
        load_ckpt(path)
    except Exception:  # noqa: BLE001 - being written right now
        return False
    return True


@pytest.mark.slow
def test_train_resume_after_kill_9_finishes_the_configured_epochs(tmp_path, write_config) -> None:
    epochs = 30
    cfg = write_config("run.yaml", project="Res", epochs=epochs, data_config={"n": 2000})
    log = tmp_path / "train.log"
    argv = [sys.executable, str(TRAIN), "--config", str(cfg), "--output", str(tmp_path / "runs")]
    proc = start(argv, tmp_path, log)
    try:
        last = wait_for(
            lambda: next((tmp_path / "runs").rglob("last.ckpt"), None),
            120,
            "the first last.ckpt",
            proc,
            log,
        )
        wait_for(
            lambda: _readable(last) and load_ckpt(last)["epoch"] >= 2,
            120,
            "a checkpoint after epoch 3",
            proc,
            log,
        )
        proc.kill()
        proc.wait(timeout=EXIT_TIMEOUT)
    finally:
        stop(proc)
    run_dir = last.parent.parent
    assert not (run_dir / RESULT_FILE).exists()  # killed before the end
    killed_at = load_ckpt(last)["epoch"]
    assert killed_at < epochs - 1

    done = run([*argv, "--resume"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"after {epochs} epochs" in done.stdout
    history = json.loads((run_dir / RESULT_FILE).read_text())["history"]
    assert len(history) == epochs and all(math.isfinite(v) for v in history)


def test_last_checkpoint_holds_the_last_epoch_even_when_it_is_not_the_best(
    small_config, tmp_path, quiet
) -> None:
    # Gradient ascent: val_loss rises every epoch, so the best epoch is the first one.
    cfg = small_config(
        epochs=3, optimizer="torch.optim.SGD", optimizer_config={"lr": 0.05, "maximize": True}
    )
    result = train(cfg, tmp_path)
    run_dir = result.results[0].run_dir
    history = result.results[0].history
    assert history == sorted(history) and len(set(history)) == 3  # worse every epoch
    assert load_ckpt(run_dir / "checkpoints" / "best.ckpt")["epoch"] == 0
    assert load_ckpt(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 2


# --------------------------------------------------------------------------- security

SECRET = "s3cret"


def test_password_is_never_printed_nor_written(tmp_path, write_config, postgres_url) -> None:
    url = postgres_url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth ignores it
    run_cfg = write_config("run.yaml", project="Sec", data_config={"n": 300})
    opt = tmp_path / "optimize.yaml"
    opt.write_text(optimize_yaml(STUDY, 1))
    proc = run(tune_args(run_cfg, opt, url, tmp_path / "runs"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "postgres:***@" in proc.stdout  # the study line is there, redacted
    best = tmp_path / "runs" / "Sec_Opt" / STUDY / "best.yaml"
    assert best.is_file()
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_password_of_an_unreachable_server_is_not_printed(tmp_path, write_config) -> None:
    run_cfg = write_config("run.yaml", project="Sec", data_config={"n": 300})
    opt = tmp_path / "optimize.yaml"
    opt.write_text(optimize_yaml(STUDY, 1))
    proc = run(
        tune_args(
            run_cfg,
            opt,
            f"{postgres_scheme()}://postgres:{SECRET}@127.0.0.1:1/x",
            tmp_path / "runs",
        ),
        tmp_path,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "cannot open the storage" in proc.stderr
    assert (
        "Connection refused" in proc.stderr or "could not connect" in proc.stderr
    )  # the driver tried to connect
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "command, which", [("tune", "run"), ("tune", "optimize"), ("train", "run")]
)
def test_yaml_python_tags_are_refused_and_never_executed(
    command, which, tmp_path, write_config
) -> None:
    marker = tmp_path / "pwned"
    run_cfg = write_config("run.yaml", project="Sec", data_config={"n": 300})
    opt = tmp_path / "optimize.yaml"
    opt.write_text(optimize_yaml(STUDY, 1))
    target = run_cfg if which == "run" else opt
    target.write_text(
        target.read_text() + f"evil: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    if command == "tune":
        argv = tune_args(run_cfg, opt, f"sqlite:///{tmp_path}/study.db", tmp_path / "runs")
    else:
        argv = [
            sys.executable,
            str(TRAIN),
            "--config",
            str(run_cfg),
            "--output",
            str(tmp_path / "runs"),
        ]
    proc = run(argv, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert str(target) in proc.stderr and "python/object/apply" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "runs").exists()
