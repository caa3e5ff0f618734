"""``tune.py --workers N``: N local processes on one study, sharing the machine's GPUs and
CPU threads and one output stream.

Workers pull: each one asks the study for a trial while its total is not reached, so the
fast ones do more, and one that dies leaves nothing behind (its running trial is failed
and queued again by the next worker that looks, ``tuning.liveness``).

Where GPUs are visible, each worker gets its own device set through
``CUDA_VISIBLE_DEVICES``: the ``devices`` GPUs one trial trains on, or a share of them
with ``--trials-per-gpu K`` (K workers packed on each set, for small models).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

from lightning_hpo.errors import ConfigError
from lightning_hpo.tuning.signals import ignore_further_signals, last_signal, record_signal

VISIBLE = "CUDA_VISIBLE_DEVICES"
WORKER_FLAG = "--worker"  # what marks a --workers child on its command line


def without_flags(argv: Sequence[str], flags: Mapping[str, bool]) -> list[str]:
    """``argv`` without the ``flags`` (each mapped to whether it takes a value, which goes
    too: ``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in flags:
            skip = flags[flag] and not eq
            continue
        out.append(arg)
    return out


def usable_cpus() -> int:
    """The CPUs this process may run on: a container or ``taskset`` limits them below
    ``os.cpu_count()``, and threads beyond them only contend."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, by the ids ``CUDA_VISIBLE_DEVICES`` gives them (all of
    the machine's when it is unset); none on a machine without CUDA."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get(VISIBLE)
    if listed is None:
        return [str(i) for i in range(count)]
    return [g.strip() for g in listed.split(",") if g.strip()][:count]


def device_sets(
    gpus: Sequence[str], per_trial: int, per_gpu: int = 1, workers: int | None = None
) -> list[list[str]]:
    """Each worker's GPUs: the visible ``gpus`` cut into sets of ``per_trial`` (one trial's
    ``devices``), each set shared by ``per_gpu`` workers, handed out round the sets so that
    fewer workers spread over the GPUs. ``workers`` None: as many as fit.

    Raises:
        ConfigError: more workers than fit, or a trial needing more GPUs than are visible.
    """
    sets = [list(gpus[i : i + per_trial]) for i in range(0, len(gpus) - per_trial + 1, per_trial)]
    if not sets:
        raise ConfigError(
            "devices",
            None,
            f"a trial trains on {per_trial} GPUs, but {len(gpus)} are visible",
            "lower the run config's devices, or make more GPUs visible",
        )
    slots = [s for _ in range(per_gpu) for s in sets]
    workers = len(slots) if workers is None else workers
    if workers > len(slots):
        raise ConfigError(
            "--workers",
            None,
            f"{workers} workers do not fit: {len(gpus)} visible GPU(s), {per_trial} per trial, "
            f"{per_gpu} worker(s) per GPU set make {len(slots)}",
            f"use --workers {len(slots)} or fewer, or pack more with --trials-per-gpu "
            f"{-(-workers // len(sets))}",
        )
    return slots[:workers]


def _relayed(pipe, relay: Callable[[str, bool], None], err: bool) -> threading.Thread:
    """A thread handing each line of a child's ``pipe`` to ``relay`` until the child closes it."""

    def pump() -> None:
        with pipe:
            for line in pipe:
                relay(line, err)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def run_workers(
    argv: list[str],
    workers: int,
    todo: int,
    gpu_sets: Sequence[Sequence[str]] | None = None,
    relay: Callable[[str, bool], None] | None = None,
) -> list[int]:
    """Run ``workers`` child processes of ``tune.py`` on the study (no more than the
    ``todo`` trials it still needs) and wait for them.

    Each child pulls trials until the study holds its total. It gets an equal share of the
    CPU threads and, with ``gpu_sets``, its own GPUs (``CUDA_VISIBLE_DEVICES``). Children
    inherit stdout, so their per-trial lines form one stream; with ``relay`` (this
    process's live display) each line a child writes is handed to ``relay(line, err)``
    instead, so that the children never write into the display's region. Ctrl-C or
    SIGTERM to this process is passed on to every child; each fails its running trial
    cleanly and exits, and this waits for them.

    Returns:
        The children's exit statuses (negative: killed by that signal).
    """
    count = max(0, min(workers, todo))
    threads = max(1, usable_cpus() // max(1, count))
    base = without_flags(argv, {"--workers": True, "--threads": True, "--trials-per-gpu": True})
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    piped = (
        {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "errors": "replace"}
        if relay
        else {}
    )

    def interrupt(signum, frame):
        record_signal(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        for k in range(count):
            cmd = [sys.executable, "-m", "lightning_hpo", "tune", *base, WORKER_FLAG]
            env = dict(os.environ)
            if gpu_sets:
                env[VISIBLE] = ",".join(gpu_sets[k])
            proc = subprocess.Popen([*cmd, "--threads", str(threads)], env=env, **piped)
            procs.append(proc)
            if relay:
                pumps += [_relayed(proc.stdout, relay, False), _relayed(proc.stderr, relay, True)]
        codes = [p.wait() for p in procs]
        for pump in pumps:
            pump.join()  # every line a child wrote, before the parent's own
        return codes
    except KeyboardInterrupt:
        ignore_further_signals()
        for p in procs:
            if p.poll() is None:
                p.send_signal(last_signal())
        for p in procs:
            p.wait()
        for pump in pumps:
            pump.join(timeout=5)  # the children's last lines (their interrupted trials)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
