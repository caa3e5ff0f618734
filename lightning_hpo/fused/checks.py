"""Whether a run's seeds can train fused, and why not when they cannot."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from torch import nn
from torch.utils.data import TensorDataset

from lightning_hpo.builtin.data import SupervisedData
from lightning_hpo.builtin.supervised import SupervisedModule
from lightning_hpo.fused.stacking import (
    Mode,
    optimizer_blocker,
    vectorise,
)


def blocker(
    dm: pl.LightningDataModule,
    nets: Sequence[nn.Module],
    optimizer: Callable,
    optimizer_config: dict[str, Any],
    devices: int | str,
    module: type = SupervisedModule,
) -> tuple[Mode | None, str | None]:
    """How the seeds' ``nets`` can train fused (``(mode, None)``), or why not (``(None, reason)``).

    Checked on the first real training batch: the stacked forward must reproduce each
    network's own, and the optimizer must update stacked tensors element by element.
    ``module`` is the run's LightningModule class: ``FusedModule`` runs the built-in one's
    steps for every seed, so any other (a subclass included) trains seed after seed.
    """
    reason = module_blocker(module)
    if reason is not None:
        return None, reason
    if not isinstance(dm, SupervisedData):
        return (
            None,
            "the data is a LightningDataModule, which draws its own batches; fusing needs a (train, val) dataset factory",
        )
    if devices != 1 and not isinstance(dm.train, TensorDataset):
        return (
            None,
            "on several devices fusing needs TensorDatasets (each seed's shard must come from its own shuffle)",
        )
    x = next(iter(dm.train_dataloader()))[0]
    mode, reason = vectorise(nets, x)
    if mode is None:
        return None, reason
    why = optimizer_blocker(optimizer, optimizer_config, [p.shape for p in nets[0].parameters()])
    if why:
        return None, f"{getattr(optimizer, '__qualname__', optimizer)}: {why}"
    return mode, None


def module_blocker(module: type) -> str | None:
    """Why seeds of a ``module`` cannot fuse, or None: ``FusedModule`` runs the built-in
    module's steps for every seed; any other module's steps (and its own optimizers and
    schedulers) see one network, so they train seed after seed."""
    if module is SupervisedModule:
        return None
    return (
        f"module {module.__module__}.{module.__qualname__} is not the built-in "
        f"{SupervisedModule.__module__}.{SupervisedModule.__qualname__}, whose steps fused "
        "training runs"
    )
