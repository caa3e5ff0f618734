"""train.py's live region: each seed's epoch ``e/E`` and its latest metric (fused seeds move
together), with the elapsed time and an ETA. Told by the run's ``RunRecorder`` after each
epoch (``FitOptions.on_epoch``) and by ``train`` when a seed ends; drawn by the display's
thread, so the training thread only stores a few numbers per epoch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from lightning_hpo.live.screen import clock, eta, short


class SeedBoard:
    """``render()`` for ``live.screen.Screen``: the run's seeds, ``epochs`` each, on ``metric``."""

    def __init__(self, seeds: Sequence[int], epochs: int, metric: str):
        self.epochs, self.metric = epochs, metric
        self.rows: dict[int, tuple[int, float | None]] = {seed: (0, None) for seed in seeds}
        self.ended: set[int] = set()
        self.start = time.monotonic()
        self._done_at_start: float | None = None
        self._lock = threading.Lock()

    def epoch(self, epoch: int, values: dict[int, float]) -> None:
        """The seeds ``values`` names finished ``epoch`` (from 1) with these values."""
        with self._lock:
            for seed, value in values.items():
                self.rows[seed] = (epoch, value)

    def ended_seed(self, seed: int, epochs: int, final: float) -> None:
        """A seed is done (trained, early-stopped, or read back by ``--resume``)."""
        with self._lock:
            self.rows[seed] = (epochs, final)
            self.ended.add(seed)

    def _progress(self) -> float:
        return sum(
            1.0 if seed in self.ended else min(1.0, e / max(self.epochs, 1))
            for seed, (e, _) in self.rows.items()
        )

    def __call__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            rows = dict(self.rows)
            ended = set(self.ended)
            done = self._progress()
        if self._done_at_start is None:
            self._done_at_start = done
        elapsed = time.monotonic() - self.start
        left = eta(done, len(rows), self._done_at_start, elapsed)
        head = Text(
            f"seeds {len(ended)}/{len(rows)} done | elapsed {clock(elapsed)} | ETA {clock(left)}",
            style="bold",
        )
        table = Table.grid(padding=(0, 2))
        for seed, (e, value) in rows.items():
            table.add_row(
                f"  seed {seed}",
                ProgressBar(total=max(self.epochs, 1), completed=min(e, self.epochs), width=24),
                f"epoch {e}/{self.epochs}",
                f"{self.metric} {short(value) if value is not None else '-'}",
                "done" if seed in ended else "",
            )
        return Group(head, table)
