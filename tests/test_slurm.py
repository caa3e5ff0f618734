"""``tune.py --launcher slurm``: workers as a SLURM job array on a shared study.

The slow tests submit real jobs to a real SLURM cluster (``bash .ci/slurm-up`` starts a
single-node one on this machine; CI runs it), with a PostgreSQL study.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from services import postgres_url, run, start, tune_args, unavailable, wait_for  # noqa: F401 - fixtures

from lightning_hpo.attrs import FAIL_REASON, INTERRUPTED, PID, RETRY_ATTR, SLURM_JOB_ATTR
from lightning_hpo.cli import EXIT_BAD_INPUT, tune_main
from lightning_hpo.config.yamlio import dump_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.tuning.signals import interrupted_by
from lightning_hpo.tuning.slurm import (
    STORAGE_ENV,
    Worker,
    launch,
    slurm_parameters,
    submit,
    worker_argv,
)

RUN = {
    "project": "Slurm",
    "device": "cpu",
    "seeds": [1],
    "batch_size": 64,
    "data_config": {"n": 600},
    "net_config": {"nodes": 16, "layers": 2},
}
SPACE = {"optimizer_config": {"lr": {"type": "float", "min": 1.0e-4, "max": 1.0e-2, "log": True}}}


def configs(tmp_path: Path, trials: int, epochs: int) -> tuple[Path, Path]:
    dump_yaml(RUN | {"epochs": epochs}, tmp_path / "run.yaml")
    dump_yaml(
        {"study_name": "s", "trials": trials, "seed": 1, "pruner": None, "search_space": SPACE},
        tmp_path / "optimize.yaml",
    )
    return tmp_path / "run.yaml", tmp_path / "optimize.yaml"


# --------------------------------------------------------------------------- no cluster needed


def test_slurm_refuses_a_storage_other_nodes_cannot_share(tmp_path: Path, capsys) -> None:
    run_yaml, opt_yaml = configs(tmp_path, trials=2, epochs=1)
    for storage in (None, f"sqlite:///{tmp_path}/s.db"):
        argv = ["--run-config", str(run_yaml), "--optimize-config", str(opt_yaml)]
        argv += ["--launcher", "slurm", *(["--storage", storage] if storage else [])]
        assert tune_main(argv) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith("error: --storage") and "SQLite" in err and "postgresql://" in err
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "runs").exists()


def test_slurm_options_pass_through_to_submitit_and_sbatch() -> None:
    params = slurm_parameters(
        ["partition=gpu", "time=04:00:00", "gpus_per_task=1", "cpus-per-task=4", "reservation=r1"],
        "j",
    )
    assert params["partition"] == "gpu" and params["time"] == 240
    assert params["gpus_per_task"] == 1 and params["cpus_per_task"] == 4
    # A key submitit does not know is the sbatch option itself; preempted jobs come back.
    assert params["additional_parameters"] == {"requeue": True, "reservation": "r1"}
    assert slurm_parameters([], "j")["time"] is None  # the partition's limit, not 5 minutes
    for given, minutes in (("90", 90), ("1:30", 2), ("1-00:00", 1440), ("2-3", 51 * 60)):
        assert slurm_parameters([f"time={given}"], "j")["time"] == minutes
    for bad in ("partition", "=gpu", "time=soon"):
        with pytest.raises(ConfigError, match="--slurm"):
            slurm_parameters([bad], "j")


def test_each_job_runs_the_command_without_the_launchers_flags() -> None:
    argv = ["--trials", "4", "--launcher", "slurm", "--slurm", "time=5", "--workers=3"]
    argv += ["--no-wait", "--slurm=partition=x", "--storage", "postgresql://u@h/d"]
    assert worker_argv(argv) == ["--trials", "4", "--storage", "postgresql://u@h/d"]


def test_interrupted_by_reads_a_childs_exit_status() -> None:
    assert interrupted_by(128 + signal.SIGUSR2) == signal.SIGUSR2
    assert interrupted_by(-signal.SIGKILL) == signal.SIGKILL
    assert interrupted_by(0) is None and interrupted_by(2) is None


PASSWORD = "S3cretPw"


@pytest.fixture
def fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``sbatch`` on the PATH that accepts any job and records the environment it was
    given (what SLURM hands the jobs); returns that record's path."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch_env"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\nenv > {record}\necho 'Submitted batch job 4242'\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    return record


def record_argv(argv: list[str]) -> int:
    """A stand-in for tune_main in a job: remembers what it was called with."""
    record_argv.calls.append(argv)
    return 0


record_argv.calls = []


def test_the_storage_password_reaches_the_jobs_only_through_their_environment(
    tmp_path: Path, fake_sbatch: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import submitit

    url = f"postgresql://alice:{PASSWORD}@dbhost/optuna"
    argv = worker_argv(["--storage", url, "--launcher", "slurm", "--workers", "2"])
    folder = tmp_path / "runs" / "slurm"
    jobs = submit(Worker(record_argv, argv, str(tmp_path)), 2, [], folder, "lightning-hpo:s", url)
    assert [j.job_id for j in jobs] == ["4242_0", "4242_1"]
    # Nothing written for the jobs (pickles, submission script) holds the password ...
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert written and not [p for p in written if PASSWORD.encode() in p.read_bytes()]
    # ... sbatch had it in its environment, and the launcher's own is as it was.
    assert f"{STORAGE_ENV}={url}" in fake_sbatch.read_text().splitlines()
    assert STORAGE_ENV not in os.environ
    # A job reads it from its environment (and keeps it from the trials' processes).
    worker = submitit.core.utils.DelayedSubmission.load(jobs[0].paths.submitted_pickle).function
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(STORAGE_ENV, url)
    record_argv.calls.clear()
    assert worker() == 0
    assert record_argv.calls == [["--storage", url, "--worker"]]
    assert STORAGE_ENV not in os.environ
    # Without it (sbatch --export=NONE), the job says so on one line, without the password.
    assert worker() == EXIT_BAD_INPUT and len(record_argv.calls) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --storage: postgresql://alice:***@dbhost/optuna: ")
    assert f"{STORAGE_ENV} is missing" in line and PASSWORD not in line
    # A URL without a secret is pickled as it is, and needs nothing from the environment.
    plain = Worker(record_argv, ["--storage=postgresql://u@h/d"], str(tmp_path))
    assert plain.secret is None and plain() == 0
    assert record_argv.calls[-1] == ["--storage=postgresql://u@h/d", "--worker"]


def test_an_sbatch_export_that_keeps_the_password_from_the_jobs_is_refused(
    tmp_path: Path, fake_sbatch: Path
) -> None:
    url = f"postgresql://alice:{PASSWORD}@dbhost/optuna"
    worker = Worker(record_argv, ["--storage", url], str(tmp_path))
    for given in ("NONE", "HOME,PATH"):
        with pytest.raises(ConfigError, match=f"--slurm export: {given}: keeps the storage URL"):
            submit(worker, 1, [f"export={given}"], tmp_path / "slurm", "j", url)
    assert not fake_sbatch.exists()
    submit(worker, 1, [f"export=PATH,{STORAGE_ENV}"], tmp_path / "slurm", "j", url)
    assert fake_sbatch.exists()


def test_the_no_wait_hint_prints_a_report_command_that_works(
    tmp_path: Path, fake_sbatch: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import json
    import shlex
    import warnings

    from lightning_hpo.cli import report_main

    monkeypatch.chdir(tmp_path)  # no configs/ here: the report finds only the templates
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(["val_acc"])
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 1.0},
            distributions={"x": optuna.distributions.FloatDistribution(0, 2)},
            value=0.9,
        )
    )
    lines: list[str] = []
    argv = ["--storage", url, "--launcher", "slurm", "--no-wait"]
    folder = tmp_path / "out" / "S_Opt" / "s"
    launch(record_argv, argv, 1, [], study, folder, url, wait=False, echo=lines.append)
    [cmd] = [line.strip() for line in lines if "tune.py report" in line]
    words = shlex.split(cmd)
    assert words[:3] == ["python", "tune.py", "report"]
    assert words[words.index("--output") + 1] == str(tmp_path / "out")
    capsys.readouterr()
    code = report_main([*words[3:], "--json", "--no-plots"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)  # the study's own metric and direction
    assert (report["metric"], report["direction"]) == ("val_acc", "maximize")
    # The hint's password stays hidden, and the hint says what stands in for it.
    lines.clear()
    secret = f"postgresql://alice:{PASSWORD}@dbhost/optuna"
    launch(record_argv, ["--storage", secret], 1, [], study, folder, secret, False, lines.append)
    text = "\n".join(lines)
    assert "--storage 'postgresql://alice:***@dbhost/optuna' --study-name s" in text
    assert PASSWORD not in text and "*** stands for the storage's password" in text


# --------------------------------------------------------------------------- a real cluster


@pytest.fixture
def slurm() -> None:
    if shutil.which("sbatch") is None:
        unavailable("SLURM is not installed: bash .ci/slurm-up installs and starts a local cluster")
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if states.returncode != 0 or not re.search(r"^(idle|mix|alloc|comp)", states.stdout, re.M):
        unavailable("SLURM's controller or node is not up: bash .ci/slurm-up starts them")


def squeue(array: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", array, "-o", "%i"], capture_output=True, text=True)
    return out.stdout.split()


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none before the launcher has created it."""
    try:
        return optuna.load_study(study_name="s", storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def trial_where(storage: str, predicate) -> optuna.trial.FrozenTrial | None:
    """The study's first trial ``predicate`` holds for, or None (``wait_for`` polls it)."""
    return next((t for t in trials(storage) if predicate(t)), None)


@pytest.mark.slow
def test_a_slurm_study_runs_its_workers_as_one_job_array(
    tmp_path: Path, slurm, postgres_url: str
) -> None:
    run_yaml, opt_yaml = configs(tmp_path, trials=4, epochs=8)
    cmd = tune_args(run_yaml, opt_yaml, postgres_url, tmp_path / "runs")
    proc = run([*cmd, "--launcher", "slurm", "--workers", "2"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array = re.search(r"Submitted SLURM job array (\d+): 2 worker", proc.stdout).group(1)
    # The command waited, printing each trial as it finished (read from the storage).
    assert "[4/4] trial" in proc.stdout and "Best trial:" in proc.stdout
    done = [t for t in trials(postgres_url) if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    # Each trial names its array task; both tasks pulled trials from the shared study.
    assert {t.user_attrs[SLURM_JOB_ATTR] for t in done} == {f"{array}_0", f"{array}_1"}
    assert squeue(array) == []


@pytest.mark.slow
def test_the_time_limits_warning_interrupts_the_trial_and_the_study_continues_it(
    tmp_path: Path, slurm, postgres_url: str
) -> None:
    run_yaml, opt_yaml = configs(tmp_path, trials=3, epochs=30)
    cmd = tune_args(run_yaml, opt_yaml, postgres_url, tmp_path / "runs")
    proc = run([*cmd, "--launcher", "slurm", "--workers", "2", "--no-wait"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    array = re.search(r"Submitted SLURM job array (\d+)", proc.stdout).group(1)
    assert f"scancel {array}" in proc.stdout and f"squeue -j {array}" in proc.stdout
    try:
        first = wait_for(
            lambda: trial_where(
                postgres_url,
                lambda t: (
                    t.state == TrialState.RUNNING
                    and t.user_attrs.get(SLURM_JOB_ATTR) == f"{array}_0"
                    and (t.last_step or 0) >= 2
                ),
            ),
            240,
            f"a trial of job {array}_0 at epoch 3",
        )
        # What SLURM sends signal_delay_s before the time limit (submitit asks for SIGUSR2).
        subprocess.run(["scancel", "--signal=USR2", f"{array}_0"], check=True)
        stopped = wait_for(
            lambda: trial_where(
                postgres_url, lambda t: t.number == first.number and t.state.is_finished()
            ),
            120,
            "the interrupted trial to be failed",
        )
        assert stopped.state == TrialState.FAIL and stopped.system_attrs.get(INTERRUPTED)
        assert "SIGUSR2" in stopped.user_attrs[FAIL_REASON]
        # The job requeued itself; another worker (or the requeued job) continues the trial.
        log = next((tmp_path / "runs").rglob(f"{array}_0_0_log.out"))
        wait_for(lambda: "requeueing SLURM job" in log.read_text(), 60, "the job to requeue")
        retry = wait_for(
            lambda: trial_where(
                postgres_url,
                lambda t: (
                    (t.user_attrs.get(RETRY_ATTR) or {}).get("of") == first.number
                    and t.state == TrialState.COMPLETE
                ),
            ),
            400,
            "the interrupted trial's retry to complete",
        )
        assert retry.user_attrs[RETRY_ATTR]["continued_at_epoch"] >= 2
        assert retry.params == first.params
    finally:
        subprocess.run(["scancel", array])
        wait_for(lambda: squeue(array) == [], 120, "the cancelled jobs to leave the queue")


def _both_training(url: str) -> list | None:
    """The two RUNNING trials once both have trained an epoch (their parameters are set)."""
    training = [t for t in trials(url) if t.state == TrialState.RUNNING and t.last_step is not None]
    return training if len(training) == 2 else None


@pytest.mark.slow
def test_ctrl_c_cancels_the_job_array(tmp_path: Path, slurm, postgres_url: str) -> None:
    # Trials far longer than the test: none ends near the cancel, between two trials.
    run_yaml, opt_yaml = configs(tmp_path, trials=4, epochs=2000)
    cmd = tune_args(run_yaml, opt_yaml, postgres_url, tmp_path / "runs")
    log = tmp_path / "tune.log"
    proc = start([*cmd, "--launcher", "slurm", "--workers", "2"], tmp_path, log)
    try:
        running = wait_for(
            lambda: _both_training(postgres_url), 240, "both workers running a trial", proc, log
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    array = re.search(r"Submitted SLURM job array (\d+)", out).group(1)
    assert f"Cancelled SLURM job array {array}" in out
    # The command waited for the array to leave the queue: no trial is left RUNNING.
    assert squeue(array) == []
    ended = [t for t in trials(postgres_url) if t.state == TrialState.FAIL]
    states = [(t.number, t.state.name, t.user_attrs.get(FAIL_REASON)) for t in trials(postgres_url)]
    assert sorted(t.number for t in ended) == sorted(t.number for t in running), (states, out)
    assert not any(t.state == TrialState.RUNNING for t in trials(postgres_url))
    for t in ended:
        # scancel sent each worker SIGTERM: its trial failed as interrupted, not counted. A
        # worker still busy after SLURM's KillWait is killed; then the launcher fails its trial.
        reason = t.user_attrs[FAIL_REASON]
        if t.system_attrs.get(INTERRUPTED):
            assert "SIGTERM" in reason
        else:
            job = t.user_attrs[SLURM_JOB_ATTR]
            assert f"its SLURM job {job} ended while the trial ran" in reason
            assert f"trial {t.number} was left RUNNING by its SLURM job, killed" in out


@pytest.mark.slow
def test_a_job_killed_outright_leaves_no_trial_running(
    tmp_path: Path, slurm, postgres_url: str
) -> None:
    """SIGKILL (the out-of-memory killer, a lost node): the worker cannot fail its trial; the
    waiting launcher sees the job leave the queue and fails the trial, its parameters queued."""
    run_yaml, opt_yaml = configs(tmp_path, trials=2, epochs=200)
    cmd = tune_args(run_yaml, opt_yaml, postgres_url, tmp_path / "runs")
    log = tmp_path / "tune.log"
    proc = start([*cmd, "--launcher", "slurm", "--workers", "2"], tmp_path, log)
    try:
        running = wait_for(
            lambda: _both_training(postgres_url), 240, "both workers running a trial", proc, log
        )
        for t in running:  # the cluster is this machine
            os.kill(t.system_attrs[PID], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1, log.read_text()  # no trial completed
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    now = {t.number: t for t in trials(postgres_url)}
    for t in running:
        failed = now[t.number]
        job = failed.user_attrs[SLURM_JOB_ATTR]
        assert failed.state == TrialState.FAIL and not failed.system_attrs.get(INTERRUPTED)
        assert f"its SLURM job {job} ended while the trial ran" in failed.user_attrs[FAIL_REASON]
        assert f"trial {t.number} was left RUNNING by its SLURM job, which ended" in out
    # Each one's parameters wait for the next run, which continues it.
    waiting = [t for t in now.values() if t.state == TrialState.WAITING]
    assert sorted(str(t.params) for t in waiting) == sorted(str(t.params) for t in running)


@pytest.mark.slow
def test_a_storage_password_is_never_written_into_the_slurm_folder(
    tmp_path: Path, slurm, postgres_url: str
) -> None:
    # The test server trusts local connections, so any password is accepted.
    url = postgres_url.replace("://postgres@", f"://postgres:{PASSWORD}@")
    run_yaml, opt_yaml = configs(tmp_path, trials=2, epochs=2)
    cmd = tune_args(run_yaml, opt_yaml, url, tmp_path / "runs")
    proc = run([*cmd, "--launcher", "slurm", "--workers", "2"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The jobs reached the study with the URL SLURM handed them ...
    assert sum(t.state == TrialState.COMPLETE for t in trials(postgres_url)) == 2
    # ... and no file they or the launcher wrote holds the password.
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".pkl" for p in written) and any(p.suffix == ".out" for p in written)
    assert [p for p in written if PASSWORD.encode() in p.read_bytes()] == []
    assert PASSWORD not in proc.stdout + proc.stderr
