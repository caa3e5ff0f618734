"""What a run leaves behind: per-seed results, in memory and as ``result.json``."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_hpo.errors import RunFailed
from lightning_hpo.training.files import write_atomically

RESULT_FILE = "result.json"


@dataclass
class SeedResult:
    """What one seed's run ended with. ``history`` is the monitored metric per epoch."""

    seed: int
    run_dir: Path
    history: list[float] = field(default_factory=list)
    mode: str = "min"
    seconds: float = 0.0  # wall time of the Trainer that trained it
    together: int = 1  # seeds that Trainer trained at once (fused seeds)

    @property
    def final(self) -> float:
        return self.history[-1] if self.history else math.nan

    @property
    def best(self) -> float:
        finite = [v for v in self.history if math.isfinite(v)]
        if not finite:
            return math.nan
        return min(finite) if self.mode == "min" else max(finite)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "history": self.history,
            "mode": self.mode,
            "seconds": self.seconds,
            "together": self.together,
        }

    def save(self) -> None:
        # Whole or not at all: a retry or --resume reads a seed with this file as finished.
        write_atomically(json.dumps(self.to_json()).encode(), self.run_dir / RESULT_FILE)


@dataclass
class TrainResult:
    results: list[SeedResult]

    @property
    def finals(self) -> list[float]:
        return [r.final for r in self.results]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals)

    @property
    def std(self) -> float:
        # statistics.stdev raises on a nan or inf (a diverged seed): the spread is then nan.
        if not all(math.isfinite(v) for v in self.finals):
            return math.nan
        return statistics.stdev(self.finals) if len(self.finals) > 1 else 0.0


def require_history(results: list[SeedResult], monitor: str, epochs: int) -> None:
    """Raise RunFailed when a seed of a run that ended recorded ``monitor`` in no epoch
    (validation never ran), before anything records it as finished."""
    empty = [r for r in results if not r.history]
    if empty:
        raise RunFailed(
            str(empty[0].run_dir),
            f"{monitor} was recorded in none of the {epochs} epoch(s) trained (validation never "
            "ran), so the run has no result",
            "make validation run every epoch (trainer_config's check_val_every_n_epoch and "
            "limit_val_batches, the data's validation set) and train it afresh (move the "
            "run's folder away)",
        )


def load_result(run_dir: Path) -> SeedResult | None:
    """A finished seed's result, or None when the seed has not finished (or, from a version
    that wrote them, its result recorded no epoch)."""
    path = run_dir / RESULT_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not data["history"]:
        return None
    return SeedResult(
        data["seed"],
        run_dir,
        data["history"],
        data["mode"],
        data["seconds"],
        data.get("together", 1),
    )
