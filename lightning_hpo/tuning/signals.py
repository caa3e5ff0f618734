"""Signals: SIGTERM stops a study the way Ctrl-C does, and the process remembers which one came."""

from __future__ import annotations

import contextlib
import signal
import threading

_received: list[int] = []  # the signals that interrupted this process, in order


def interrupt_on_signals() -> None:
    """Make SIGTERM (kill, schedulers, docker stop) stop a study the way Ctrl-C does, and
    remember which one came (``last_signal``: the exit status is 128 + its number).

    Lightning keeps a handler that is already installed, so a signal during ``fit`` also
    arrives as KeyboardInterrupt and fails the running trial cleanly.
    """

    def interrupt(signum, frame):
        record_signal(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)


def record_signal(signum: int) -> None:
    _received.append(signum)


def last_signal() -> int:
    """The signal that interrupted this process; SIGINT when none was recorded (Ctrl-C
    under Python's own handler)."""
    return _received[-1] if _received else signal.SIGINT


def ignore_further_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def restored_signal_handlers():
    """Undo ``ignore_further_signals`` when the study returns, for programs that call tune()."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
