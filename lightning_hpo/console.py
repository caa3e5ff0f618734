"""What Lightning prints: its per-Trainer banners silenced, our one-time notes on stderr."""

from __future__ import annotations

import logging
import sys
import warnings

_state = {
    "quiet": False
}  # set by quiet_lightning(); spawned DDP ranks inherit it through the callbacks
_noted: set[str] = set()


def is_quiet() -> bool:
    return _state["quiet"]


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners ("GPU available: ...") that bury our output,
    here and in the ranks a spawn-based DDP strategy starts for this process's runs."""
    _state["quiet"] = True
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")  # Lightning vs torch 2.13, harmless


def note_once(message: str) -> None:
    """``note: message`` on stderr, once per process."""
    if message not in _noted:
        _noted.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)
