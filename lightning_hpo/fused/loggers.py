"""Fused seeds' logging: one TensorBoard run per seed, and one for the seeds' mean."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_hpo.fused.seeds import SeedStates, split_seed_metric


class SeedLoggers(Logger):
    """The Trainer's one logger, in front of one TensorBoard run per seed and one for the mean.

    ``val_loss/seed_89`` goes to seed 89's run as ``val_loss`` (until the epoch that seed
    stopped in), plain names go to the ``mean`` run: TensorBoard shows each seed's curves
    as if it had trained alone, plus their mean.
    """

    def __init__(
        self, mean: TensorBoardLogger, per_seed: dict[int, TensorBoardLogger], states: SeedStates
    ):
        super().__init__()
        self.mean, self.per_seed, self.states = mean, per_seed, states

    @property
    def name(self) -> str:
        return self.mean.name

    @property
    def version(self) -> str | int:
        return self.mean.version

    @property
    def save_dir(self) -> str:
        return self.mean.save_dir

    @property
    def log_dir(self) -> str:
        return self.mean.log_dir

    def for_seed(self, seed: int) -> TensorBoardLogger:
        return self.per_seed[seed]

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
        self.mean.log_metrics(plain, step)
        # What has no per-seed values (lr, epoch) is every seed's too.
        shared = {
            k: v for k, v in plain.items() if not any(k in values for values in by_seed.values())
        }
        epoch = metrics.get("epoch")
        for seed, values in by_seed.items():
            if epoch is None or self.states.training(seed, int(epoch)):
                self.per_seed[seed].log_metrics(shared | values, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # per seed, by RunRecorder, with each seed's final metric

    def save(self) -> None:
        for logger in (self.mean, *self.per_seed.values()):
            logger.save()

    def finalize(self, status: str) -> None:
        for logger in (self.mean, *self.per_seed.values()):
            logger.finalize(status)
