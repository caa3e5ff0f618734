"""A live region at the bottom of the terminal, drawn with ``rich``, and the lines printed
above it.

The region is redrawn by the display's own thread once a second from a ``render``
function, and at once after a line is printed above it (a finished trial's: the region
then agrees with the line), never twice in ``MIN_SECONDS``. So whatever ``render`` reads
(a study's storage) is read off the training thread, about once a second.

Lines printed meanwhile (``Screen.echo``, and anything written to ``sys.stdout`` or, on
the same terminal, ``sys.stderr``) go above the region and stay in the scrollback as they
are; the region itself is erased on exit, so the scrollback ends up holding the same
lines a plain run prints.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

REFRESH_SECONDS = 1.0
MIN_SECONDS = 0.25  # between two drawings, however many lines are printed
MARGIN = 4  # columns left free on the region's right


def wanted(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (standard output) is a terminal that can show a live region."""
    stream = sys.stdout if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # closed, or no file behind it
        return False
    return terminal and os.environ.get("TERM", "") not in ("", "dumb")


class Screen:
    """``with Screen(render) as screen:`` shows ``render()`` below the lines ``screen.echo``
    prints, redrawn every ``period`` seconds, until the block ends.

    ``render`` runs on the display's thread; an exception in it keeps the last region (a
    storage that did not answer this second answers the next).
    """

    def __init__(
        self,
        render: Callable[[], Any],
        period: float = REFRESH_SECONDS,
        file: IO[str] | None = None,
        force_terminal: bool | None = None,
    ):
        from rich.console import Console

        self.render, self.period = render, period
        self.console = Console(
            file=file or sys.stdout, force_terminal=force_terminal, highlight=False
        )
        self._stop = threading.Event()
        self._wake = threading.Event()  # a line was printed: redraw now, not in up to a second
        self._lock = threading.Lock()  # relayed lines, from several threads, one at a time
        self._thread: threading.Thread | None = None
        self._live = None
        self._last: Any = ""

    def _draw(self) -> Any:
        from rich.constrain import Constrain

        try:
            # A few columns short of the terminal: the cursor waits at the end of the last
            # line, and the ^C a terminal echoes there must not wrap (it would scroll the
            # region off by one, and its erasing at the end would miss a line).
            self._last = Constrain(self.render(), width=max(1, self.console.width - MARGIN))
        except Exception:  # noqa: BLE001 - the display never stops the run it shows
            pass
        return self._last

    def _run(self) -> None:
        while True:
            self._wake.wait(self.period)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._live.update(self._draw(), refresh=True)
            self._stop.wait(MIN_SECONDS)  # a burst of lines wakes it once

    def __enter__(self) -> Screen:
        from rich.live import Live

        self._live = Live(
            self._draw(),
            console=self.console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=True,
            # stderr into the region's console only where it is the same terminal: a log
            # file that stderr goes to keeps getting the errors.
            redirect_stderr=wanted(sys.stderr),
        )
        self._live.start(refresh=True)
        self._thread = threading.Thread(target=self._run, name="lightning-hpo-live", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._live.stop()

    def echo(self, line: str) -> None:
        """Print ``line`` above the region, as it is (no markup, wrapped by the terminal)."""
        self.console.print(line, markup=False, emoji=False, soft_wrap=True)
        self._wake.set()

    def relay(self, line: str, err: bool = False) -> None:
        """A line another process wrote (a ``--workers`` child): stdout's above the region,
        stderr's where this process's stderr goes."""
        line = line.rstrip("\n")
        if not err:
            self.echo(line)
            return
        with self._lock:
            print(line, file=sys.stderr, flush=True)


def short(value: Any) -> str:
    """A parameter's or metric's value as the progress lines print it (4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def clock(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``-`` for a time not known yet."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta(done: float, total: float, done_at_start: float, elapsed: float) -> float | None:
    """Seconds left at the pace of this run so far (the work done before it started does
    not count toward the pace); None before any progress."""
    gained = done - done_at_start
    if gained <= 0 or elapsed <= 0:
        return None
    return max(0.0, total - done) * elapsed / gained
