"""A run's parts, built from its config: the data, each seed's network, the LightningModule.

A constructor that rejects its config's arguments is a ConfigError, raised before anything
is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from torch import nn

from lightning_hpo.data import build_datamodule, feature_sizes
from lightning_hpo.errors import ConfigError
from lightning_hpo.imports import accepted_kwargs, resolve
from lightning_hpo.module import RegressionModule
from lightning_hpo.run_config import RunConfig


def build_net(cfg: RunConfig, dm: pl.LightningDataModule, seed: int) -> nn.Module:
    """The network of one seed: ``seed_everything(seed)``, then the constructor, so its
    initial weights are the same whether the seed trains alone or fused."""
    net_cls = resolve(cfg.net)
    net_kwargs = dict(cfg.net_config)
    accepted = accepted_kwargs(net_cls)
    if accepted is None or {"in_features", "out_features"} <= accepted:
        net_kwargs["in_features"], net_kwargs["out_features"] = feature_sizes(dm)
    pl.seed_everything(seed, workers=True, verbose=False)
    return net_cls(**net_kwargs)


def module_kwargs(cfg: RunConfig) -> dict[str, Any]:
    criterion = resolve(cfg.criterion)
    if isinstance(criterion, type):
        criterion = criterion(**cfg.criterion_config)
    return {
        "criterion": criterion,
        "optimizer": resolve(cfg.optimizer),
        "optimizer_config": cfg.optimizer_config,
        "scheduler": resolve(cfg.scheduler) if cfg.scheduler else None,
        "scheduler_config": cfg.scheduler_config,
        "epochs": cfg.epochs,
    }


def build_module(cfg: RunConfig, dm: pl.LightningDataModule, seed: int = 0) -> RegressionModule:
    """The LightningModule of one seed, with the network sized from the data."""
    return RegressionModule(net=build_net(cfg, dm, seed), **module_kwargs(cfg))


@contextlib.contextmanager
def config_errors(cfg: RunConfig, stage: str) -> Iterator[None]:
    """A constructor rejecting its config is a ConfigError, raised before anything is written."""
    try:
        yield
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            "<run config>",
            f"{stage}_config",
            f"{getattr(cfg, stage)} rejected its arguments: {exc}",
            f"fix {stage}_config",
        ) from None


def build_data(cfg: RunConfig, seed: int) -> pl.LightningDataModule:
    """The data of a run whose (first) seed is ``seed``, built after ``seed_everything(seed)``
    so a factory drawing from the global RNG is reproducible too. Fused seeds share it."""
    pl.seed_everything(seed, workers=True, verbose=False)
    with config_errors(cfg, "data"):
        return build_datamodule(resolve(cfg.data), cfg.data_config, cfg.batch_size, seed)


def build_components(cfg: RunConfig, seed: int) -> tuple[pl.LightningDataModule, RegressionModule]:
    """The data and the module of one seed."""
    dm = build_data(cfg, seed)
    with config_errors(cfg, "net"):
        return dm, build_module(cfg, dm, seed)


def hparams_of(cfg: RunConfig) -> dict[str, Any]:
    """The config flattened for TensorBoard's HParams tab (``net_config.nodes`` etc.)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
