"""A run's DataModule by the Lightning contract: ``prepare_data()`` once per machine, before
any ``setup()``; and ``setup()`` with a Trainer attached, also where lightning-hpo calls it
itself before training (``setup_outside_fit``).

A run builds its DataModule once and trains every seed on it, so Lightning, which calls
``prepare_data`` at the start of every ``Trainer.fit`` (on local rank 0), would call it once
per seed; and the run itself reads a batch (the network's sizes, the fusion check, the
preflight) before the first fit. ``prepare`` calls it here, in the process that builds the
data (the machine's rank 0: ranks a spawn-based strategy starts receive a copy of the
prepared DataModule), and leaves Lightning's later calls nothing to do.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities.model_helpers import is_overridden


def _already_prepared() -> None:
    """What ``prepare_data`` does once it has run (module-level: pickled by ddp_spawn)."""


def prepare(dm: pl.LightningDataModule) -> pl.LightningDataModule:
    """Call ``dm.prepare_data()`` unless it already ran for this instance; returns ``dm``."""
    if is_overridden("prepare_data", dm, pl.LightningDataModule) and not is_prepared(dm):
        dm.prepare_data()
        dm.prepare_data = _already_prepared  # Lightning's own call at each fit: nothing left
    return dm


def is_prepared(dm: pl.LightningDataModule) -> bool:
    return vars(dm).get("prepare_data") is _already_prepared


def setup_outside_fit(dm: pl.LightningDataModule, stage: str = "fit") -> None:
    """``dm.setup(stage)`` where lightning-hpo reads batches before any ``Trainer.fit`` (the
    preflight's data check, the first batch that sizes the built-in module's network).

    Inside ``fit`` Lightning attaches its Trainer as ``dm.trainer``; here a throwaway
    single-device CPU Trainer stands in for it meanwhile (it sets no torch flag and writes
    nothing), so a ``setup`` that reads ``self.trainer`` (``world_size``, ``global_rank``) works.
    """
    if dm.trainer is not None:
        dm.setup(stage)
        return
    from lightning_hpo.console import banners_off

    with banners_off():
        dm.trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    try:
        dm.setup(stage)
    finally:
        dm.trainer = None
