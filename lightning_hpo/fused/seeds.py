"""Several seeds in one Trainer: how their metrics are named and which are still training."""

from __future__ import annotations

from collections.abc import Sequence

_SEED_SEPARATOR = "/seed_"


def seed_metric(name: str, seed: int) -> str:
    """The key of one seed's value of a metric, e.g. ``val_loss/seed_89``. The plain name
    holds the mean over the seeds."""
    return f"{name}{_SEED_SEPARATOR}{seed}"


def split_seed_metric(key: str) -> tuple[str, int | None]:
    """``("val_loss", 89)`` for ``val_loss/seed_89``; ``(key, None)`` for any other key."""
    name, sep, seed = key.rpartition(_SEED_SEPARATOR)
    if sep and seed.lstrip("-").isdigit():
        return name, int(seed)
    return key, None


class SeedStates:
    """Which seeds of a fused run still train: early stopping stops them one by one.

    One object is shared by the module (which keeps a stopped seed's weights) and the
    callbacks and logger (which stop recording it after its last epoch).
    """

    def __init__(self, seeds: Sequence[int]):
        self.seeds = list(seeds)
        self.stopped_at: dict[int, int] = {}  # seed -> the last epoch it trained

    def stop(self, seed: int, epoch: int) -> None:
        self.stopped_at.setdefault(seed, epoch)

    def training(self, seed: int, epoch: int) -> bool:
        """Whether ``seed`` trained in ``epoch`` (its stopping epoch included)."""
        return seed not in self.stopped_at or epoch <= self.stopped_at[seed]

    def all_stopped(self) -> bool:
        return len(self.stopped_at) == len(self.seeds)
