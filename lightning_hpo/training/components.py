"""A run's parts, built from its config: the data, each seed's network, the LightningModule.

The module is the class ``module:`` names, constructed as the README's module contract says:
``cls(net=..., criterion=..., optimizer=..., optimizer_config=..., scheduler=...,
scheduler_config=..., epochs=..., **module_config)``, plus ``run_config=`` (what
``load_from_checkpoint`` rebuilds it from) when the constructor takes it. A module that takes
none of the run's parts (``module_contract.builds_own_parts``) is ``cls(**module_config)``.

A constructor that rejects its config's arguments is a ConfigError, raised before anything
is written.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
from torch import nn

from lightning_hpo.builtin.data import SupervisedData, build_datamodule, feature_sizes
from lightning_hpo.builtin.supervised import module_parts
from lightning_hpo.config.class_paths import shareable
from lightning_hpo.config.imports import accepted_kwargs
from lightning_hpo.config.run import RunConfig
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.prepared import prepare

# Each DataModule's (in_features, out_features): read from its first batch once, not per seed.
_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def net_kwargs(cfg: RunConfig, dm: pl.LightningDataModule) -> dict[str, Any]:
    """The network's arguments: ``net_config``, plus ``in_features``/``out_features`` from
    the data when the network takes them and ``net_config`` does not give both."""
    kwargs = dict(cfg.net_config)
    sizes = {"in_features", "out_features"}
    accepted = accepted_kwargs(cfg.components.net)
    if (accepted is None or sizes <= accepted) and not sizes <= kwargs.keys():
        if dm not in _SIZES:
            _SIZES[dm] = feature_sizes(dm)
        kwargs["in_features"], kwargs["out_features"] = _SIZES[dm]
    return kwargs


def build_net(cfg: RunConfig, dm: pl.LightningDataModule, seed: int) -> nn.Module:
    """The network of one seed: ``seed_everything(seed)``, then the constructor, so its
    initial weights are the same whether the seed trains alone or fused."""
    kwargs = net_kwargs(cfg, dm)
    pl.seed_everything(seed, workers=True, verbose=False)
    return cfg.components.net(**kwargs)


def module_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The contract's arguments besides ``net``: criterion, optimizer, scheduler, their
    configs and the epochs."""
    parts = cfg.components
    return module_parts(parts.criterion, parts.optimizer, parts.scheduler, cfg.to_dict())


def saved_config(cfg: RunConfig, dm: pl.LightningDataModule) -> dict[str, Any]:
    """The run config a module saves as its ``run_config`` hyperparameter: ``net_config``
    holds every argument the network was built with, so a checkpoint rebuilds the network
    without the data."""
    return shareable(cfg.to_dict()) | {"net_config": net_kwargs(cfg, dm)}


def module_arguments(cfg: RunConfig, dm: pl.LightningDataModule) -> dict[str, Any]:
    """What the run hands ``module``'s constructor besides ``net`` (the module contract)."""
    kwargs = module_kwargs(cfg) | dict(cfg.module_config)
    accepted = accepted_kwargs(cfg.components.module)
    if accepted is None or "run_config" in accepted:
        kwargs["run_config"] = saved_config(cfg, dm)
    return kwargs


def build_module(cfg: RunConfig, dm: pl.LightningDataModule, seed: int = 0) -> pl.LightningModule:
    """The LightningModule of one seed (the class ``module:`` names), with the network sized
    from the data; or, for a module that builds its own parts, from ``module_config`` alone
    after ``seed_everything(seed)``."""
    if cfg.own_parts:
        pl.seed_everything(seed, workers=True, verbose=False)
        with config_errors(cfg, "module"):
            return cfg.components.module(**cfg.module_config)
    with config_errors(cfg, "net"):
        net = build_net(cfg, dm, seed)
    with config_errors(cfg, "criterion"):
        kwargs = module_arguments(cfg, dm)
    with config_errors(cfg, "module"):
        return cfg.components.module(net=net, **kwargs)


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
    so a factory drawing from the global RNG is reproducible too, and prepared (its
    ``prepare_data``, once: ``prepared.prepare``). Every seed of the run trains on it."""
    pl.seed_everything(seed, workers=True, verbose=False)
    with config_errors(cfg, "data"):
        dm = build_datamodule(cfg.components.data, cfg.data_config, cfg.batch_size, seed)
    return prepare(dm)


def data_for_seed(dm: pl.LightningDataModule, seed: int) -> pl.LightningDataModule:
    """The run's data as ``seed`` trains on it: the built-in ``SupervisedData`` shuffles by
    its seed (a copy sharing the datasets); a DataModule of your own is the same instance."""
    return dm.for_seed(seed) if isinstance(dm, SupervisedData) else dm


def build_components(
    cfg: RunConfig, seed: int
) -> tuple[pl.LightningDataModule, pl.LightningModule]:
    """The data and the module of one seed."""
    dm = build_data(cfg, seed)
    return dm, build_module(cfg, dm, seed)


def hparams_of(cfg: RunConfig) -> dict[str, Any]:
    """The config flattened for TensorBoard's HParams tab (``net_config.nodes`` etc.)."""
    flat: dict[str, Any] = {}
    for key, value in shareable(cfg.to_dict()).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}
