"""Fused seeds' logging: in each of the run's loggers (TensorBoard by default), one run per
seed and one for the seeds' mean."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from lightning_hpo.fused.seeds import SeedStates, split_seed_metric


class SeedLoggers(Logger):
    """The Trainer's one logger, in front of each seed's loggers and the mean's.

    ``val_loss/seed_89`` goes to seed 89's runs as ``val_loss`` (until the epoch that seed
    stopped in), plain names go to the ``mean`` runs: every logger shows each seed's curves
    as if it had trained alone, plus their mean.
    """

    def __init__(
        self,
        mean: Sequence[Logger],
        per_seed: dict[int, Sequence[Logger]],
        states: SeedStates,
    ):
        super().__init__()
        self.mean, self.states = list(mean), states
        self.per_seed = {seed: list(loggers) for seed, loggers in per_seed.items()}

    @property
    def name(self) -> str | None:
        return self.mean[0].name

    @property
    def version(self) -> str | int | None:
        return self.mean[0].version

    @property
    def save_dir(self) -> str | None:
        return self.mean[0].save_dir

    @property
    def log_dir(self) -> str | None:
        return getattr(self.mean[0], "log_dir", self.save_dir)

    def for_seed(self, seed: int) -> list[Logger]:
        return self.per_seed[seed]

    def _all(self) -> list[Logger]:
        return [*self.mean, *(logger for loggers in self.per_seed.values() for logger in loggers)]

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        plain: dict[str, float] = {}
        by_seed: dict[int, dict[str, float]] = {seed: {} for seed in self.per_seed}
        for key, value in metrics.items():
            name, seed = split_seed_metric(key)
            if seed in by_seed:
                by_seed[seed][name] = value
            else:
                plain[key] = value
        for logger in self.mean:
            logger.log_metrics(plain, step)
        # What has no per-seed values (lr, epoch) is every seed's too.
        shared = {
            k: v for k, v in plain.items() if not any(k in values for values in by_seed.values())
        }
        epoch = metrics.get("epoch")
        for seed, values in by_seed.items():
            if epoch is None or self.states.training(seed, int(epoch)):
                for logger in self.per_seed[seed]:
                    logger.log_metrics(shared | values, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # per seed, by RunRecorder, with each seed's final metric

    def save(self) -> None:
        for logger in self._all():
            logger.save()

    def finalize(self, status: str) -> None:
        for logger in self._all():
            logger.finalize(status)
