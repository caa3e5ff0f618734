"""The LightningModule: wraps any network, owns the loss, the optimizer and the logging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_hpo.imports import accepted_kwargs
from lightning_hpo.metrics import LR, TRAIN_LOSS, VAL_LOSS, VAL_R2


class RegressionModule(pl.LightningModule):
    """Trains ``net`` with ``criterion``; logs epoch means of the losses, R² and the learning rate.

    Losses are summed on the device and logged once per epoch: a per-step ``log`` or
    ``.item()`` would synchronise every batch and cost more than the MLP itself.

    Args:
        net: any ``nn.Module``.
        criterion: a loss module or function ``(pred, target) -> scalar``.
        optimizer: optimizer class (or factory) called as ``optimizer(params, **optimizer_config)``.
        scheduler: LR scheduler class called as ``scheduler(optimizer, **scheduler_config)``, or None.
        epochs: the run's length; fills a scheduler's ``T_max`` when the config leaves it out.
    """

    def __init__(
        self,
        net: nn.Module,
        criterion: Callable,
        optimizer: Callable,
        optimizer_config: dict[str, Any],
        scheduler: Callable | None = None,
        scheduler_config: dict[str, Any] | None = None,
        epochs: int = 1,
    ):
        super().__init__()
        self.net, self.criterion = net, criterion
        self.optimizer_factory, self.optimizer_config = optimizer, optimizer_config
        self.scheduler_factory, self.scheduler_config = scheduler, dict(scheduler_config or {})
        accepted = accepted_kwargs(scheduler) if scheduler is not None else set()
        if accepted is not None and "T_max" in accepted:
            self.scheduler_config.setdefault("T_max", epochs)
        self._sums: dict[str, torch.Tensor] = {}

    def forward(self, x):
        return self.net(x)

    def _accumulate(self, name: str, value: torch.Tensor) -> None:
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        pred = self(x)
        loss = self.criterion(pred, y)
        n = x.shape[0]
        self._accumulate(f"{stage}_loss", loss.detach() * n)
        self._accumulate(f"{stage}_n", torch.tensor(float(n), device=loss.device))
        if stage == "val" and y.is_floating_point() and pred.shape == y.shape:
            # Running sums for R² = 1 - SSE / SST, averaged over outputs.
            y2 = y.reshape(n, -1)
            self._accumulate("val_sse", (pred.detach().reshape(n, -1) - y2).pow(2).sum(0))
            self._accumulate("val_sy", y2.sum(0))
            self._accumulate("val_syy", y2.pow(2).sum(0))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def _pop_mean(self, stage: str) -> torch.Tensor | None:
        total, n = self._sums.pop(f"{stage}_loss", None), self._sums.pop(f"{stage}_n", None)
        return None if total is None else total / n

    def on_validation_epoch_end(self):
        n = self._sums.get("val_n")
        val_loss = self._pop_mean("val")
        if val_loss is None:
            return
        self.log(VAL_LOSS, val_loss, sync_dist=True)
        sse, sy, syy = (self._sums.pop(k, None) for k in ("val_sse", "val_sy", "val_syy"))
        if sse is not None:
            sst = (syy - sy.pow(2) / n).clamp_min(torch.finfo(sse.dtype).tiny)
            self.log(VAL_R2, (1 - sse / sst).mean(), sync_dist=True)

    def on_train_epoch_start(self):
        # Read before the epoch: by its end Lightning has already stepped the scheduler.
        # sync_dist: lr is the same on every rank; averaging it keeps Lightning's DDP warning away.
        self.log(LR, float(self.trainer.optimizers[0].param_groups[0]["lr"]), sync_dist=True)

    def _log_train_loss(self) -> None:
        train_loss = self._pop_mean("train")
        if train_loss is not None:
            self.log(TRAIN_LOSS, train_loss, sync_dist=True)

    def on_validation_epoch_start(self):
        # Validation runs inside the training epoch: log its training mean first, so the
        # pruning callback sees this epoch's train_loss, not the previous one's.
        if not self.trainer.sanity_checking:
            self._log_train_loss()

    def on_train_epoch_end(self):
        self._log_train_loss()  # epochs without validation

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters(), **self.optimizer_config)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, **self.scheduler_config)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
