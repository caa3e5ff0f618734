"""The LightningModule: wraps any network, owns the loss, the optimizer and the logging."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_hpo.config.imports import accepted_kwargs, resolve
from lightning_hpo.config.module_contract import SCHEDULE_INTERVAL, scheduler_interval
from lightning_hpo.metrics import LR, TRAIN_LOSS, VAL_ACC, VAL_LOSS, VAL_R2

# The sums a validation epoch adds up, batch after batch (``SupervisedModule._accumulate``):
# the loss times the batch's samples, and for R² (value targets) the squared errors, the
# targets and their squares per output, or for accuracy (class targets) the right argmaxes.
# The loss's is ``_step``'s f"{stage}_loss" for stage "val".
VAL_LOSS_SUM, SSE, SUM_Y, SUM_YY, HITS = "val_loss", "val_sse", "val_sy", "val_syy", "val_hits"
VAL_SUMS = (VAL_LOSS_SUM, SSE, SUM_Y, SUM_YY, HITS)


def reduce_sums(
    strategy: pl.strategies.Strategy, sums: dict[str, torch.Tensor], n: int
) -> tuple[dict[str, torch.Tensor], int]:
    """``sums`` and the sample count ``n`` added up over every rank of ``strategy``: one
    all-reduce of them all, flattened into one float64 tensor (a count stays exact)."""
    device = next(iter(sums.values())).device
    count = torch.tensor([n], dtype=torch.float64, device=device)
    flat = torch.cat([*(t.to(torch.float64).flatten() for t in sums.values()), count])
    flat = strategy.reduce(flat, reduce_op="sum")
    total, start = {}, 0
    for name, t in sums.items():
        total[name] = flat[start : start + t.numel()].reshape(t.shape).to(t.dtype)
        start += t.numel()
    return total, int(flat[-1].item())


def r2_score(sums: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """R² = 1 - SSE / SST per output, from an epoch's ``SSE``, ``SUM_Y`` and ``SUM_YY``."""
    sse = sums[SSE]
    sst = (sums[SUM_YY] - sums[SUM_Y].pow(2) / n).clamp_min(torch.finfo(sse.dtype).tiny)
    return 1 - sse / sst


def is_class_target(y: torch.Tensor) -> bool:
    """Integer targets are class indices (classification); floating-point ones are values."""
    return not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)


def scheduler_arguments(
    scheduler: Callable, config: Mapping[str, Any], epochs: int, steps: int | None = None
) -> dict[str, Any]:
    """The scheduler's keyword arguments: its config without ``interval``, with the
    schedule's length filled in where the config leaves it out: ``T_max`` (a cosine's) and
    ``total_steps`` (OneCycleLR's) are the run's epochs, or its optimizer ``steps`` for a
    schedule stepped every step."""
    arguments = {k: v for k, v in config.items() if k != SCHEDULE_INTERVAL}
    length = steps if steps is not None and scheduler_interval(config) == "step" else epochs
    accepted = accepted_kwargs(scheduler) or ()
    if "T_max" in accepted:
        arguments.setdefault("T_max", length)
    if "total_steps" in accepted and "epochs" not in arguments:
        arguments.setdefault("total_steps", length)
    return arguments


def build_criterion(criterion: Callable, config: Mapping[str, Any]) -> Callable:
    """The loss: a class built with ``criterion_config``, or a loss function as it is."""
    return criterion(**config) if isinstance(criterion, type) else criterion


def module_parts(
    criterion: Callable,
    optimizer: Callable,
    scheduler: Callable | None,
    run_config: Mapping[str, Any],
) -> dict[str, Any]:
    """The module's arguments besides ``net``: the criterion (built from
    ``criterion_config`` when it is a class), the optimizer and scheduler with their configs,
    and the epochs.

    A run builds them from its config's resolved components, ``load_from_checkpoint``
    from the run config the checkpoint saved: the same arguments either way, so a module
    rebuilt from a checkpoint is the one that trained.
    """
    return {
        "criterion": build_criterion(criterion, run_config.get("criterion_config", {})),
        "optimizer": optimizer,
        "optimizer_config": dict(run_config.get("optimizer_config", {})),
        "scheduler": scheduler,
        "scheduler_config": dict(run_config.get("scheduler_config", {})),
        "epochs": run_config.get("epochs", 1),
    }


def parts_from_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """``module_parts`` from a saved run config's import paths (a checkpoint's)."""
    scheduler = run_config.get("scheduler")
    return module_parts(
        resolve(run_config["criterion"]),
        resolve(run_config["optimizer"]),
        resolve(scheduler) if scheduler else None,
        run_config,
    )


class SupervisedModule(pl.LightningModule):
    """Trains ``net`` with ``criterion``; logs epoch means of the losses, the learning rate, and
    ``val_r2`` for value targets or ``val_acc`` for integer class targets.

    Losses and scores are summed on the device and logged once per epoch: a per-step ``log``
    or ``.item()`` would synchronise every batch and cost more than the MLP itself. On
    several ranks the validation sums are added up over the ranks (one all-reduce per
    epoch, ``reduce_sums``) before any division, so every validation metric is the whole
    validation set's, whatever the number of ranks.

    Checkpoints load back the Lightning way, ``SupervisedModule.load_from_checkpoint(path)``:
    the objects (network, loss, optimizer and scheduler classes) are not saved as
    hyperparameters; ``run_config`` is, and rebuilds them.

    Args:
        net: any ``nn.Module``; None to build it from ``run_config``.
        criterion: a loss module or function ``(pred, target) -> scalar``.
        optimizer: optimizer class (or factory) called as ``optimizer(params, **optimizer_config)``.
        scheduler: LR scheduler class called as ``scheduler(optimizer, **scheduler_config)``, or None.
        epochs: the run's length; fills a scheduler's ``T_max`` when the config leaves it out.
        run_config: the run config as a mapping, its ``net_config`` holding every argument
            the network was built with (sizes from the data included). Saved with the
            checkpoints; the objects left None are built from it.
    """

    # Constructor arguments that are objects, rebuilt from run_config rather than saved.
    NOT_HYPERPARAMETERS = ("net", "criterion", "optimizer", "scheduler")

    def __init__(
        self,
        net: nn.Module | None = None,
        criterion: Callable | None = None,
        optimizer: Callable | None = None,
        optimizer_config: dict[str, Any] | None = None,
        scheduler: Callable | None = None,
        scheduler_config: dict[str, Any] | None = None,
        epochs: int = 1,
        run_config: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=list(self.NOT_HYPERPARAMETERS))
        if net is None or criterion is None or optimizer is None:
            if run_config is None:
                raise TypeError(
                    f"{type(self).__name__} needs net, criterion and optimizer, or run_config to build them"
                )
            parts = parts_from_config(run_config)
            if net is None:
                net = resolve(run_config["net"])(**run_config["net_config"])
            criterion = criterion if criterion is not None else parts["criterion"]
            if optimizer is None:
                optimizer, scheduler = parts["optimizer"], parts["scheduler"]
        self.net, self.criterion = net, criterion
        self.optimizer_factory, self.optimizer_config = optimizer, dict(optimizer_config or {})
        self.scheduler_factory, self.scheduler_config = scheduler, dict(scheduler_config or {})
        self.epochs = epochs
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}  # samples per stage this epoch (no tensor per step)

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name around every hook it calls, some 35 times a
        # training step; nn.Module.__setattr__ would search the parameter, buffer and
        # submodule tables each time (2 us against 0.2 us: 4 % of a default epoch).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x):
        return self.net(x)

    def _accumulate(self, name: str, value: torch.Tensor, scale: int = 1) -> None:
        """Add ``value * scale`` to this epoch's sum ``name``: one kernel a step."""
        total = self._sums.get(name)
        if total is None:
            # At least float32: an epoch's sums in bf16/fp16 (trainer_config precision) lose counts.
            self._sums[name] = value.to(torch.promote_types(value.dtype, torch.float32)) * scale
        else:
            total.add_(value, alpha=scale)

    def _count(self, stage: str, n: int) -> None:
        self._counts[stage] = self._counts.get(stage, 0) + n

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        pred = self(x)
        loss = self.criterion(pred, y)
        n = x.shape[0]
        self._accumulate(f"{stage}_loss", loss.detach(), n)
        self._count(stage, n)
        if stage == "val" and y.is_floating_point() and pred.shape == y.shape:
            # Running sums for R² = 1 - SSE / SST, averaged over outputs.
            y2 = y.reshape(n, -1)
            self._accumulate(SSE, (pred.detach().reshape(n, -1) - y2).pow(2).sum(0))
            self._accumulate(SUM_Y, y2.sum(0))
            self._accumulate(SUM_YY, y2.pow(2).sum(0))
        elif stage == "val" and pred.ndim == y.ndim + 1 and is_class_target(y):
            # Class scores [n, C] (or [n, C, ...] against [n, ...]): count the right argmax.
            hits = pred.detach().argmax(1) == y
            self._accumulate(HITS, hits.sum(dtype=torch.float32) / (hits.numel() / n))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def _pop_mean(self, stage: str) -> torch.Tensor | None:
        total, n = self._sums.pop(f"{stage}_loss", None), self._counts.pop(stage, 0)
        return None if total is None else total / n

    def _pop_val_sums(self) -> tuple[dict[str, torch.Tensor], int] | None:
        """This validation epoch's sums (``VAL_SUMS``) and samples, over every rank; None
        when it validated nothing. Each rank validated its own samples, each once
        (``data.TensorBatches``), so the totals are the whole validation set's."""
        sums = {k: self._sums.pop(k) for k in VAL_SUMS if k in self._sums}
        n = self._counts.pop("val", 0)
        if VAL_LOSS_SUM not in sums:
            return None
        trainer = self._trainer  # None: called outside a Trainer, one process
        if trainer is not None and trainer.world_size > 1:
            sums, n = reduce_sums(trainer.strategy, sums, n)
        return sums, n

    def _log_epoch_value(self, name: str, value: torch.Tensor) -> None:
        """Log ``value``, already the same on every rank (from ``reduce_sums``).

        sync_dist keeps Lightning's DDP warning away; reducing by max hands the value back
        as it is, in one all-reduce, where the mean's sum-then-divide could round it and
        takes two (the value and its batch count)."""
        self.log(name, value, sync_dist=True, reduce_fx="max")

    def on_validation_epoch_end(self):
        popped = self._pop_val_sums()
        if popped is None:
            return
        sums, n = popped
        self._log_epoch_value(VAL_LOSS, sums[VAL_LOSS_SUM] / n)
        if SSE in sums:
            self._log_epoch_value(VAL_R2, r2_score(sums, n).mean())
        if HITS in sums:
            self._log_epoch_value(VAL_ACC, sums[HITS] / n)

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
        interval = scheduler_interval(self.scheduler_config)
        steps = int(self.trainer.estimated_stepping_batches) if interval == "step" else None
        arguments = scheduler_arguments(
            self.scheduler_factory, self.scheduler_config, self.epochs, steps
        )
        scheduler = self.scheduler_factory(optimizer, **arguments)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }
