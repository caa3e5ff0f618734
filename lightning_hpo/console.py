"""What Lightning prints: its per-Trainer banners silenced, our one-time notes on stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator

# Set by quiet_lightning(); spawned DDP ranks inherit it through the callbacks.
_state = {"quiet": False}
_noted: set[str] = set()


def is_quiet() -> bool:
    return _state["quiet"]


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
# Lightning's deprecation warning under torch 2.13, once per trial, and its advice to use
# srun on any machine that has it (a SLURM login node), where tune.py submits its workers.
_HARMLESS = r".*(LeafSpec|The `srun` command is available on your system).*"


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners ("GPU available: ...") that bury our output,
    here and in the ranks a spawn-based DDP strategy starts for this process's runs."""
    import lightning.pytorch  # noqa: F401 - its import sets its loggers to INFO: come after it

    _state["quiet"] = True
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=_HARMLESS)


@contextlib.contextmanager
def banners_off() -> Iterator[None]:
    """Lightning's banners (and its harmless warning) silenced for the body only: a Trainer
    built just to check options, a Python caller's run."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_HARMLESS)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def note_once(message: str, echo: Callable[[str], None] | None = None) -> None:
    """``note: message``, once per process: on stderr, or through ``echo`` (the tuner's
    line printer) when given."""
    if message not in _noted:
        _noted.add(message)
        if echo is None:
            print(f"note: {message}", file=sys.stderr, flush=True)
        else:
            echo(f"note: {message}")
