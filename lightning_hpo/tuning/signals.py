"""Signals: SIGTERM stops a study the way Ctrl-C does, and the process remembers which one came."""

from __future__ import annotations

import contextlib
import signal
import threading

# Ctrl-C, kill / docker stop / a scheduler's end, SLURM's warning before a time limit
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
_received: list[int] = []  # the signals that interrupted this process, in order


def interrupt_on_signals() -> None:
    """Make SIGTERM (kill, schedulers, docker stop) and SIGUSR2 (the warning SLURM sends
    before a job's time limit, as submitit asks it to) stop a study the way Ctrl-C does, and
    remember which one came (``last_signal``: the exit status is 128 + its number).

    Lightning keeps a handler that is already installed, so a signal during ``fit`` also
    arrives as KeyboardInterrupt and fails the running trial cleanly.
    """

    def interrupt(signum, frame):
        record_signal(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in STOPPING:
        signal.signal(sig, interrupt)


def record_signal(signum: int) -> None:
    _received.append(signum)


def last_signal() -> int:
    """The signal that interrupted this process; SIGINT when none was recorded (Ctrl-C
    under Python's own handler)."""
    return _received[-1] if _received else signal.SIGINT


def ignore_further_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in STOPPING:
            signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def restored_signal_handlers():
    """Undo ``ignore_further_signals`` when the study returns, for programs that call tune()."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in STOPPING}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def interrupted_by(status: int) -> int | None:
    """The signal a child process's exit ``status`` says stopped it: killed by it (negative)
    or exiting with 128 + its number, as this tool does when interrupted. None otherwise."""
    if status < 0:
        return -status
    if 128 < status < 128 + 65:
        return status - 128
    return None
