"""``tune.py --launcher slurm --workers N``: the study's workers as one SLURM job array,
submitted through submitit.

Each array task runs the same worker a local ``--workers`` child runs (``tune.py ...
--worker``): it pulls trials from the shared study until the study holds its total. So
the storage must be one every node reaches (a database server, a Redis journal, or a
journal file on a shared file system); an SQLite file is refused.

Limits and preemption. submitit asks SLURM for SIGUSR2 ``signal_delay_s`` (90) seconds
before a job's time limit. The worker takes SIGUSR2, SIGTERM and Ctrl-C alike: it fails
its running trial as interrupted (not counted, its parameters queued again) and exits;
on SIGUSR2 the job then requeues itself. The requeued job, or any other worker of the
study, continues that trial from its checkpoints (``tuning.continuation``). A preempted
job (SIGTERM) is requeued by SLURM itself: the launcher submits with ``--requeue``.

The launching command waits and prints each finished trial, read from the storage,
until no job of the array is left; Ctrl-C cancels the array. ``--no-wait`` returns after
submitting, with the commands to watch and to cancel.

Secrets. A storage URL with a password is never written into the slurm folder: submitit
pickles the ``Worker`` (world-readable, beside the logs), so the worker holds the URL
redacted and the jobs get the real one in their environment (``STORAGE_ENV``, which
``sbatch`` exports from the submitting command's environment and SLURM keeps with the
job, readable by its owner and the administrators only). A requeued job gets it again.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning_hpo.attrs import SLURM_JOB_ATTR
from lightning_hpo.cli.common import EXIT_BAD_INPUT
from lightning_hpo.errors import ConfigError
from lightning_hpo.storage.connect import redact
from lightning_hpo.storage.signed import slurm_job
from lightning_hpo.tuning.signals import ignore_further_signals, interrupted_by
from lightning_hpo.tuning.workers import WORKER_FLAG, without_flags

LAUNCHER_FLAGS = {"--launcher": True, "--slurm": True, "--no-wait": False, "--workers": True}
STORAGE_FLAG = "--storage"
STORAGE_ENV = "LIGHTNING_HPO_STORAGE"  # the storage URL, in the jobs' environment, never pickled
EXTRA = "pip install 'lightning-hpo[slurm]'"
REQUEUE_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM to send before the time limit
POLL_SECONDS = 2.0
CANCEL_WAIT_SECONDS = 300  # longer than any sane KillWait (SLURM's default: 30 s)


def slurm_parameters(items: Sequence[str], job_name: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters from ``--slurm KEY=VALUE`` items.

    Keys submitit knows (``partition``, ``time``, ``gpus_per_task``, ``cpus_per_task``,
    ``mem``, ...) are passed as they are (``time`` also as ``[D-]HH:MM:SS``); any other
    key becomes the ``sbatch`` option of that name (``--slurm reservation=x`` is
    ``#SBATCH --reservation=x``), which sbatch checks.
    """
    from submitit.slurm.slurm import _get_default_parameters

    known = _get_default_parameters()
    # No time unless given: the partition's default limit, not submitit's 5 minutes.
    params: dict[str, Any] = {"job_name": job_name, "time": None}
    extra: dict[str, Any] = {"requeue": True}  # a preempted job comes back
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(
                "--slurm",
                item,
                "expected KEY=VALUE",
                "e.g. --slurm partition=gpu --slurm time=04:00:00",
            )
        if key == "time":
            params["time"] = _minutes(value)
        elif key in known and key != "additional_parameters":
            params[key] = int(value) if value.isdigit() else value
        else:
            extra[key] = value
    params["additional_parameters"] = extra
    return params


def _minutes(value: str) -> int:
    """SLURM's time formats (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in
    whole minutes, rounded up."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not match:
        raise ConfigError(
            "--slurm time", value, "expected minutes or [D-]HH:MM:SS", "e.g. --slurm time=04:00:00"
        )
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + b * 60 + c
    else:  # M or M:S
        seconds = a * 60 + (b or 0)
    return max(1, math.ceil(seconds / 60))


def check_storage(url: str | None) -> None:
    """Refuse a storage that the cluster's nodes cannot share (SQLite, the default)."""
    if url is None or url.startswith("sqlite"):
        raise ConfigError(
            "--storage",
            redact(url) if url else "the default SQLite file",
            "SLURM workers run on other nodes, and an SQLite file cannot be shared between "
            "machines (its locks do not hold on network file systems)",
            "give --storage postgresql://user@host/db, mysql+pymysql://..., "
            "journal+redis://host:6379/0, or journal:<file on a shared file system>",
        )


def check_cluster() -> None:
    """submitit installed and SLURM's client on the PATH, or one line saying what to do."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--launcher", "slurm", "needs the submitit package, which is not installed", EXTRA
        ) from None
    if shutil.which("sbatch") is None:
        raise ConfigError(
            "--launcher",
            "slurm",
            "sbatch is not on this machine's PATH",
            "run tune.py on a machine that submits to your SLURM cluster (a login node)",
        )


def worker_argv(argv: Sequence[str]) -> list[str]:
    """tune.py's arguments for each job: the launching command's, without the launcher's own."""
    return without_flags(argv, LAUNCHER_FLAGS)


def storage_url(argv: Sequence[str]) -> str | None:
    """The value of ``--storage`` in ``argv`` (the last one given), or None."""
    url = None
    for i, arg in enumerate(argv):
        if arg == STORAGE_FLAG and i + 1 < len(argv):
            url = argv[i + 1]
        elif arg.startswith(STORAGE_FLAG + "="):
            url = arg.partition("=")[2]
    return url


def with_storage(argv: Sequence[str], url: str) -> list[str]:
    """``argv`` with every ``--storage`` value replaced by ``url``."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == STORAGE_FLAG and i + 1 < len(out):
            out[i + 1] = url
        elif arg.startswith(STORAGE_FLAG + "="):
            out[i] = f"{STORAGE_FLAG}={url}"
    return out


class Worker:
    """What each array task runs (pickled by submitit): the worker command ``main(argv +
    [--worker])`` (tune.py's main, pickled by name) in the job's own process, whose output
    is the job's log. Its signal handlers replace submitit's: SIGTERM and the time limit's
    warning (``REQUEUE_SIGNAL``) fail the running trial as interrupted. After the warning
    the job requeues itself, and the requeued job continues that trial.

    A storage URL with a password is kept redacted (``secret``: the redacted URL): the job
    reads the real one from ``STORAGE_ENV`` (``submit`` puts it in sbatch's environment)."""

    def __init__(self, main: Callable[[list[str]], int], argv: Sequence[str], cwd: str):
        url = storage_url(argv)
        self.secret = redact(url) if url and redact(url) != url else None
        self.main, self.cwd = main, cwd
        self.argv = with_storage(argv, self.secret) if self.secret else list(argv)

    def storage(self) -> str | None:
        """The real storage URL, from the job's environment, when the argv holds it redacted."""
        if self.secret is None:
            return None
        url = os.environ.pop(STORAGE_ENV, None)  # not passed on to the trials' processes
        if url is None or redact(url) != self.secret:
            raise ConfigError(
                STORAGE_FLAG,
                self.secret,
                f"the storage URL did not reach this SLURM job ({STORAGE_ENV} is "
                f"{'missing from' if url is None else 'another URL in'} its environment)",
                f"submit with sbatch's default --export=ALL, or name {STORAGE_ENV} in --slurm export=...",
            )
        return url

    def __call__(self) -> int:
        os.chdir(self.cwd)
        try:
            url = self.storage()
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_BAD_INPUT
        argv = with_storage(self.argv, url) if url else self.argv
        code = self.main([*argv, WORKER_FLAG])
        job = os.environ.get("SLURM_JOB_ID")
        if interrupted_by(code) == REQUEUE_SIGNAL and job:
            ignore_further_signals()  # the requeue stops this job with SIGTERM
            print(f"requeueing SLURM job {slurm_job()}: the study goes on in it", flush=True)
            subprocess.call(["scontrol", "requeue", job])
        return code


def submit(
    worker: Worker,
    workers: int,
    items: Sequence[str],
    folder: Path,
    job_name: str,
    storage: str | None = None,
):
    """Submit ``workers`` copies of ``worker`` as one job array; return its submitit jobs.
    ``storage``: the real URL, which sbatch hands the jobs in ``STORAGE_ENV`` when the
    worker holds it redacted."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j")
    params = slurm_parameters(items, job_name)
    if worker.secret:
        _check_export(params["additional_parameters"].get("export"))
    executor.update_parameters(**params)
    jobs = []
    try:
        with (
            _environment(STORAGE_ENV, storage or None),
            executor.batch(),
        ):  # sbatch runs at the exit
            for _ in range(workers):
                jobs.append(executor.submit(worker))
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError) as exc:
        lines = str(getattr(exc, "stderr", None) or exc).strip().splitlines() or ["no reason given"]
        why = next((line for line in lines if "error" in line.lower()), lines[-1])
        raise ConfigError(
            "--slurm",
            None,
            f"sbatch refused the job array: {why.strip()}",
            "fix the --slurm options",
        ) from None
    return jobs


def _check_export(export: str | None) -> None:
    """Refuse an sbatch ``--export`` (``--slurm export=...`` or ``SBATCH_EXPORT``) that
    would keep the storage URL from the jobs."""
    for source, value in (
        ("--slurm export", export),
        ("SBATCH_EXPORT", os.environ.get("SBATCH_EXPORT")),
    ):
        names = [v.strip() for v in (value or "ALL").split(",")]
        if "ALL" not in names and STORAGE_ENV not in names:
            raise ConfigError(
                source,
                value,
                f"keeps the storage URL from the jobs: they read it from {STORAGE_ENV} (it is "
                "never written into the job files, as it holds a password)",
                f"add {STORAGE_ENV} to it, e.g. --slurm export={value},{STORAGE_ENV}"
                if "NONE" not in names
                else f"use --slurm export={STORAGE_ENV} instead of NONE",
            )


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """``name=value`` in this process's environment (which sbatch passes on) for the block."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def queued(array: str) -> list[str]:
    """The array's tasks still pending or running (``squeue``)."""
    # -r: one line per task (a pending array is otherwise one line, "A_[0-3]")
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", array, "-o", "%i"], capture_output=True, text=True
    )
    if out.returncode != 0:
        if "invalid job id" in out.stderr.lower():  # the controller forgot it: long ended
            return []
        raise RuntimeError(f"squeue -j {array} failed: {out.stderr.strip()}")
    return out.stdout.split()


def fail_ended_jobs(
    study, array: str, alive: Collection[str], echo: Callable[[str], None], how: str
) -> None:
    """Fail the trials still RUNNING whose job of ``array`` is no longer in the queue
    (``alive``, read before the trials), and say so for each (its job ``how``). Such a job
    was killed outright: SIGKILL once ``scancel``'s grace ran out, out of memory, its node
    lost. It could not fail its trial itself, and no heartbeat check may run again. Their
    parameters are queued once more, and the next run of the study continues them from
    their checkpoints."""
    from lightning_hpo.tuning.liveness import REQUEUED, fail_dead_workers

    def ended(trial) -> str | None:
        job = trial.user_attrs.get(SLURM_JOB_ATTR)
        if job and job.split("_")[0] == array and job not in alive:
            return f"its SLURM job {job} ended while the trial ran"
        return None

    for number in fail_dead_workers(study, dead=ended):
        echo(f"trial {number} was left RUNNING by its SLURM job, {how}: {REQUEUED}")


def watch(
    study,
    array: str,
    on_finished: Callable[[Any], None],
    poll: float = POLL_SECONDS,
    echo: Callable[[str], None] = print,
) -> None:
    """Until no task of ``array`` is pending or running, call ``on_finished`` once for each
    trial that finishes, in the order they finish, reading the study's storage. A trial
    whose job ended under it is failed (``fail_ended_jobs``)."""
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    while True:
        alive = queued(array)  # before reading the trials: nothing finishes unseen
        fail_ended_jobs(study, array, alive, echo, "which ended")
        fresh = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.state.is_finished() and t.number not in seen
        ]
        for t in sorted(fresh, key=lambda t: t.datetime_complete or t.datetime_start):
            seen.add(t.number)
            on_finished(t)
        if not alive:
            return
        time.sleep(poll)


def cancel(
    study, array: str, echo: Callable[[str], None] = print, poll: float = POLL_SECONDS
) -> None:
    """``scancel`` the array and wait for its jobs to leave the queue. SLURM sends each
    running worker SIGTERM, which fails its trial as interrupted (queued again for the next
    run); a worker still running after SLURM's ``KillWait`` is killed, and its trial is
    failed here (``fail_ended_jobs``). Ctrl-C again stops waiting: the next run's heartbeat
    check then fails such trials."""
    subprocess.run(["scancel", array], check=False)
    echo(f"Cancelling SLURM job array {array} (scancel {array}): waiting for its jobs to stop")
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while (alive := queued(array)) and time.monotonic() < deadline:
        time.sleep(poll)
    fail_ended_jobs(study, array, alive, echo, "killed")


def worker_failures(jobs: Sequence[Any]) -> list[str]:
    """One line per worker that exited with an error: its job id, status and last error line."""
    lines = []
    for job in jobs:
        result = job.paths.result_pickle
        if not result.exists():
            continue
        try:
            code = job.result()
        except Exception as exc:  # noqa: BLE001 - the job's own exception, reported as a line
            code, why = None, str(exc).strip().splitlines()[-1:] or ["?"]
        else:
            if code == 0 or interrupted_by(code) is not None:
                continue
            err = job.paths.stderr
            tail = err.read_text(errors="replace").strip().splitlines() if err.exists() else []
            why = [
                next((line for line in reversed(tail) if line.startswith("error:")), "see its log")
            ]
        lines.append(f"worker job {job.job_id} exited with status {code}: {why[0]}")
    return lines


def report_command(storage: str, study_name: str, output: Path) -> str:
    """The ``tune.py report`` command for this study: it describes the study as stored, so
    the storage and the study's name are enough (``--output`` puts the plots beside the
    runs when they are not under ``runs/``)."""
    cmd = f"python tune.py report --storage {shlex.quote(redact(storage))} "
    cmd += f"--study-name {shlex.quote(study_name)}"
    if output != Path("runs"):
        cmd += f" --output {shlex.quote(str(output))}"
    return cmd


def launch(
    main: Callable[[list[str]], int],
    argv: Sequence[str],
    workers: int,
    items: Sequence[str],
    study,
    folder: Path,
    storage: str,
    wait: bool,
    echo: Callable[[str], None] = print,
    on_finished: Callable[[Any], None] | None = None,
) -> tuple[list[Any], bool]:
    """Submit the workers (each runs ``main``, tune.py's), then (``wait``) print the study's trials as they finish until
    every job has ended. Ctrl-C cancels the array and says so, then re-raises.

    Returns:
        The jobs, and whether this waited for them.
    """
    slurm_folder = folder / "slurm"
    worker = Worker(main, worker_argv(argv), os.getcwd())
    name = f"lightning-hpo:{study.study_name}"
    jobs = submit(worker, workers, items, slurm_folder, name, storage_url(argv) or storage)
    array = str(jobs[0].job_id).split("_")[0]
    echo(f"Submitted SLURM job array {array}: {workers} worker(s) on study {study.study_name!r}")
    if not wait:
        echo("Watch:")
        for cmd in (
            f"squeue -j {array}",
            report_command(storage, study.study_name, folder.parent.parent),
            f"tail -f {slurm_folder}/{array}_*/{array}_*_log.out",
        ):
            echo(f"  {cmd}")
        if redact(storage) != storage:
            echo("  (*** stands for the storage's password, which is never printed)")
        echo(f"Cancel: scancel {array}")
        return jobs, False
    echo(f"Logs: {slurm_folder}/{array}_<task>/ (Ctrl-C cancels the jobs)")
    try:
        watch(study, array, on_finished or (lambda t: None), echo=echo)
    except KeyboardInterrupt:
        cancel(study, array, echo)
        echo(
            f"Cancelled SLURM job array {array}: its running trials are failed, not counted; "
            "run the same command again to continue the study"
        )
        raise
    return jobs, True
