"""Signals: SIGTERM stops a study the way Ctrl-C does, and the process remembers which one came."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# Ctrl-C, kill / docker stop / a scheduler's end, SLURM's warning before a time limit
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
_received: list[int] = []  # the signals that interrupted this process, in order
_held: list[int] | None = None  # while held (``hold_signals``): the signals that came


def interrupt_on_signals() -> None:
    """Make SIGTERM (kill, schedulers, docker stop) and SIGUSR2 (the warning SLURM sends
    before a job's time limit, as submitit asks it to) stop a study the way Ctrl-C does, and
    remember which one came (``last_signal``: the exit status is 128 + its number).

    Lightning keeps a handler that is already installed, so a signal during ``fit`` also
    arrives as KeyboardInterrupt and fails the running trial cleanly.
    """

    forget_signals()  # a new command: what interrupted an earlier one in this process is past

    def interrupt(signum, frame):
        record_signal(signum)
        if _held == []:  # held: the first one waits; a second (Ctrl-C twice) stops at once
            _held.append(signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in STOPPING:
        signal.signal(sig, interrupt)


def forget_signals() -> None:
    """Forget the signals received and held so far."""
    global _held
    _received.clear()
    _held = None


def hold_signals() -> None:
    """From a trial's end until ``release_signals``: a stopping signal is kept, not raised.

    Optuna records a trial's outcome (its tell) after the objective returns, and a
    KeyboardInterrupt raised in the middle of that leaves the trial RUNNING and ends the
    process in an ``UnboundLocalError`` traceback (``optuna.study._optimize._run_trial``)."""
    global _held
    if _held is None:
        _held = []


def release_signals() -> None:
    """Raise KeyboardInterrupt for a stopping signal held since ``hold_signals``, if any."""
    global _held
    held, _held = _held, None
    if held:
        raise KeyboardInterrupt(f"signal {held[-1]}")


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold stopping signals over a few writes that must not be cut apart; one that came
    is raised after them (not when an outer hold is on: that one releases it)."""
    outer = _held is not None
    hold_signals()
    try:
        yield
    finally:
        if not outer:
            release_signals()


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
