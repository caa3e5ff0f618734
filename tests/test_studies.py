"""Studies side by side: each owns its run folder, says why a trial failed, and exits with
a status a scheduler can read. Dead workers' trials are retried clean; optuna-dashboard
gets a storage argument it accepts.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from services import tune_options

from lightning_hpo.attrs import FAIL_REASON, HOST, PID, RETRIED_FROM, RETRY_OF, STALE
from lightning_hpo.cli import EXIT_BAD_INPUT, EXIT_NO_TRIAL_COMPLETED, tune_main
from lightning_hpo.config.optimize import optimize_config_from_dict
from lightning_hpo.config.run import build, run_config_from_dict
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.storage.dashboard import dashboard_argument, dashboard_command
from lightning_hpo.storage.stale import STALE_REASON
from lightning_hpo.tuning.liveness import fail_dead_trials
from lightning_hpo.tuning.study import TuneOptions, create_or_load_study
from lightning_hpo.tuning.tuner import tune
from lightning_hpo.tuning.workers import usable_cpus

pytestmark = pytest.mark.usefixtures("quiet")

LR_SPACE = {
    "optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-1, "log": True}}
}


# A tiny run config: 2 epochs of an 8-unit MLP on 300 points.
RUN = {
    "project": "Iso",
    "device": "cpu",
    "seeds": [1],
    "epochs": 2,
    "batch_size": 128,
    "data_config": {"n": 300},
    "net_config": {"nodes": 8, "layers": 1},
}


def make_run(**overrides):
    cfg = run_config_from_dict(RUN | overrides, "<test run>")
    build(cfg, "<test run>")
    return cfg


def make_opt(run, **overrides):
    data = {"study_name": "first", "trials": 2, "seed": 1, "pruner": None, "search_space": LR_SPACE}
    return optimize_config_from_dict(data | overrides, run, "<test optimize>")


def hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- isolation


def test_two_studies_of_one_project_write_to_their_own_folders(tmp_path: Path) -> None:
    run = make_run()
    settings = TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"))
    first = tune(run, make_opt(run), settings, echo=lambda line: None)
    before = hashes(tmp_path / "runs")
    # The same sampler seed suggests the same parameters, hence the same group names.
    second = tune(run, make_opt(run, study_name="second"), settings, echo=lambda line: None)

    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    root = tmp_path / "runs" / "Iso_Opt"
    assert {Path(t.user_attrs["run_dir"]).parent for t in first.trials} == {root / "first"}
    assert {Path(t.user_attrs["run_dir"]).parent for t in second.trials} == {root / "second"}
    after = hashes(tmp_path / "runs")
    assert {k: after[k] for k in before} == before  # nothing of the first study was touched
    assert any(k.startswith("Iso_Opt/second/") for k in after)


def test_a_rerun_after_deleting_the_database_writes_to_a_fresh_folder_and_says_so(
    tmp_path: Path,
) -> None:
    run, db = make_run(), tmp_path / "s.db"
    settings = TuneOptions(storage=f"sqlite:///{db}", output=str(tmp_path / "runs"))
    tune(run, make_opt(run), settings, echo=lambda line: None)
    before = hashes(tmp_path / "runs")
    db.unlink()  # start over, keeping runs/

    lines: list[str] = []
    again = tune(run, make_opt(run), settings, echo=lines.append)

    folder = tmp_path / "runs" / "Iso_Opt" / "first.2"
    assert {Path(t.user_attrs["run_dir"]).parent for t in again.trials} == {folder}
    assert any(
        line.startswith("note: ") and "belongs to another study" in line and str(folder) in line
        for line in lines
    )
    after = hashes(tmp_path / "runs")
    assert {k: after[k] for k in before} == before


def test_a_folder_with_files_but_no_owner_is_not_written_into(tmp_path: Path) -> None:
    run = make_run()
    stranger = tmp_path / "runs" / "Iso_Opt" / "first"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("mine")
    study = tune(
        run,
        make_opt(run),
        TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs")),
        echo=lambda line: None,
    )
    assert {Path(t.user_attrs["run_dir"]).parent.name for t in study.trials} == {"first.2"}
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- exit statuses


def _cli_configs(tmp_path: Path, **run_overrides) -> list[str]:
    run_path, opt_path = tmp_path / "run.yaml", tmp_path / "optimize.yaml"
    dump_yaml(RUN | run_overrides, run_path)
    dump_yaml(
        {"study_name": "cli", "trials": 2, "seed": 1, "pruner": None, "search_space": LR_SPACE},
        opt_path,
    )
    return tune_options(run_path, opt_path, f"sqlite:///{tmp_path}/s.db", tmp_path / "runs")


def test_a_study_in_which_no_trial_completed_exits_1_with_the_commonest_reason(
    tmp_path: Path, user_components, capsys
) -> None:
    code = tune_main(_cli_configs(tmp_path, net="user_components.LateFailingNet", net_config={}))
    err = capsys.readouterr().err
    assert code == EXIT_NO_TRIAL_COMPLETED
    (line,) = [line for line in err.splitlines() if line.startswith("no trial completed")]
    assert (
        line
        == "no trial completed: 2 failed, 0 pruned; commonest failure (2 of 2): RuntimeError: this network fails after a few steps"
    )


def test_a_network_that_fails_on_its_first_batch_is_refused_before_the_study(
    tmp_path: Path, user_components, capsys
) -> None:
    code = tune_main(_cli_configs(tmp_path, net="user_components.FailingNet", net_config={}))
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.count("\n") == 1, err
    assert f"{tmp_path / 'run.yaml'}: net_config: user_components.FailingNet" in err
    assert "RuntimeError: this network always fails" in err
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()


def test_a_study_with_a_completed_trial_exits_0(tmp_path: Path, capsys) -> None:
    assert tune_main(_cli_configs(tmp_path)) == 0
    assert "no trial completed" not in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_exits_128_plus_its_number_and_names_itself_on_the_trial(
    sig, tmp_path: Path
) -> None:
    args = _cli_configs(tmp_path, epochs=400, data_config={"n": 4000})
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_hpo", "tune", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs").rglob("events.out.tfevents.*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no trial started"
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out
    trial, retry = optuna.load_study(
        study_name="cli", storage=f"sqlite:///{tmp_path}/s.db"
    ).get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[FAIL_REASON].startswith(f"interrupted by {sig.name}")
    # Its parameters are queued: the next run continues it (a SLURM requeue, a rerun).
    assert retry.state == TrialState.WAITING and retry.params == trial.params
    assert retry.user_attrs["retry_of"] == trial.number


# --------------------------------------------------------------------------- optuna-dashboard


def test_the_study_names_its_metric_for_the_dashboard(tmp_path: Path) -> None:
    run = make_run()
    study = tune(
        run,
        make_opt(run, trials=1),
        TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs")),
        echo=lambda line: None,
    )
    assert optuna.load_study(
        study_name="first", storage=f"sqlite:///{tmp_path}/s.db"
    ).metric_names == ["val_loss"]
    assert study.trials[0].state == TrialState.COMPLETE


# optuna-dashboard's own storage guess (optuna_dashboard/_storage_url.py): "redis..." is a
# Redis journal, an existing file a journal file, an RFC 1738 URL an RDB.
_RFC1738 = re.compile(
    r"(?P<name>[\w\+]+)://(?:(?P<username>[^:/]*)(?::(?P<password>.*))?@)?(?:(?:\[(?P<ipv6host>[^/]+)\]|(?P<ipv4host>[^/:]+))?(?::(?P<port>[^/]*))?)?(?:/(?P<database>.*))?"
)


def dashboard_guess(argument: str) -> str:
    if argument.startswith("redis"):
        return "JournalRedisStorage"
    if os.path.isfile(argument):
        return "JournalFileStorage"
    if _RFC1738.match(argument):
        return "RDBStorage"
    raise ValueError(argument)


def test_the_printed_dashboard_command_is_one_optuna_dashboard_accepts(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "j" / "study.log"
    journal.parent.mkdir()
    journal.write_text("")
    cases = {
        "sqlite:///MLP_Example_Opt.db": ("sqlite:///MLP_Example_Opt.db", "RDBStorage"),
        "postgresql://me:secret@db/optuna": ("postgresql://me:***@db/optuna", "RDBStorage"),
        f"journal:{journal}": (str(journal), "JournalFileStorage"),
        "journal:j/study.log": ("j/study.log", "JournalFileStorage"),
        "journal+redis://redishost:6379/0": ("redis://redishost:6379/0", "JournalRedisStorage"),
    }
    for url, (argument, kind) in cases.items():
        assert dashboard_argument(url) == argument
        assert dashboard_guess(argument) == kind, url
        assert "secret" not in dashboard_command(url)


# --------------------------------------------------------------------------- dead workers


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_workers_trial_fails_with_a_reason_and_its_retry_carries_only_the_link(
    tmp_path: Path,
) -> None:
    run = make_run()
    study = create_or_load_study(
        run,
        make_opt(run),
        TuneOptions(storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs")),
    )
    trial = study.ask(
        {"optimizer_config_lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    )
    for key, value in {HOST: socket.gethostname(), PID: _dead_pid()}.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    trial.set_user_attr("group_name", "g[0]")
    trial.set_user_attr("pfl", {"step": 3, "decision": "ok", "history": [[3, 0.5]]})

    fail_dead_trials(study, echo=lambda line: None)

    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and dead.system_attrs[STALE] is True
    assert "died" in dead.user_attrs[FAIL_REASON]
    assert retry.state == TrialState.WAITING
    assert retry.params == dead.params
    assert retry.user_attrs == {RETRY_OF: dead.number}
    assert retry.system_attrs == {RETRIED_FROM: dead.number}


def test_a_heartbeat_stale_trial_is_labelled_and_retried_clean_so_no_worker_mistakes_the_retry(
    tmp_path: Path,
) -> None:
    run = make_run()
    settings = TuneOptions(
        storage=f"sqlite:///{tmp_path}/s.db", output=str(tmp_path / "runs"), heartbeat=1
    )
    study = create_or_load_study(run, make_opt(run), settings)
    trial = study.ask(
        {"optimizer_config_lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    )
    for key, value in {HOST: socket.gethostname(), PID: _dead_pid()}.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    trial.set_user_attr("pfl", {"step": 3, "decision": "ok", "history": [[3, 0.5]]})
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # past the grace period (2 x heartbeat; SQLite keeps whole seconds)

    optuna.storages.fail_stale_trials(study)  # what Optuna runs before each new trial

    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL and dead.user_attrs[FAIL_REASON] == STALE_REASON
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs == {RETRY_OF: dead.number} and retry.system_attrs == {
        RETRIED_FROM: dead.number
    }
    # The race: a worker takes the retry, and before it has written its own PID another
    # worker on this host looks for dead workers' trials. The retry has no host or PID.
    taken = study.ask()
    assert taken.number == retry.number
    fail_dead_trials(study, echo=lambda line: None)
    assert study.get_trials()[retry.number].state == TrialState.RUNNING


# --------------------------------------------------------------------------- threads


def test_worker_threads_follow_the_cpus_this_process_may_use(monkeypatch) -> None:
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
        assert usable_cpus() == 1
    else:
        assert usable_cpus() == (os.cpu_count() or 1)
