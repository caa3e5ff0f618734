"""``tune.py --workers N``: N local processes on one study, sharing the CPU and one output stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from lightning_hpo.tuning.signals import ignore_further_signals, last_signal, record_signal


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (either ``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = True
            continue
        if arg.startswith(flag + "="):
            continue
        out.append(arg)
    return out


def usable_cpus() -> int:
    """The CPUs this process may run on: a container or ``taskset`` limits them below
    ``os.cpu_count()``, and threads beyond them only contend."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def shares(total: int, workers: int) -> list[int]:
    """Split ``total`` trials over ``workers`` as evenly as possible (sums to ``total``)."""
    return [total // workers + (i < total % workers) for i in range(workers)]


def run_workers(argv: list[str], workers: int, todo: int) -> None:
    """Run ``todo`` trials on ``workers`` child processes of ``tune.py`` and wait for them.

    Each child gets its share of the trials, so the study's total is met exactly, and
    an equal share of the CPU threads. Children inherit stdout, so their per-trial lines
    form one stream. Ctrl-C or SIGTERM to this process is passed on to every child; each
    fails its running trial cleanly and exits, and this waits for them.
    """
    threads = max(1, usable_cpus() // workers)
    base = _without(_without(argv, "--workers"), "--threads")
    procs = []

    def interrupt(signum, frame):
        record_signal(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        for share in shares(todo, workers):
            if share > 0:
                cmd = [
                    sys.executable,
                    "-m",
                    "lightning_hpo",
                    "tune",
                    *base,
                    "--max-trials",
                    str(share),
                    "--threads",
                    str(threads),
                ]
                procs.append(subprocess.Popen(cmd))
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        ignore_further_signals()
        for p in procs:
            if p.poll() is None:
                p.send_signal(last_signal())
        for p in procs:
            p.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = [c for c in codes if c != 0]
    if failed:
        raise SystemExit(failed[0])
