"""The LightningModule of fused seeds: one Lightning Trainer trains all of a run's seeds at once.

``FusedModule`` trains a stacked network (``fused.stacking``) on one batch per seed, each
from the seed's own shuffle (``builtin.data.SeedBatches``). It logs every metric per seed
(``val_loss/seed_89``) and as the mean over the seeds under the plain name: the pruning
callback reports that mean, once per epoch.

The other pieces ``training.runs.fit_fused`` puts together: ``fused.loggers`` (one
TensorBoard run per seed, and the mean), ``fused.checkpoints`` (each seed's own one-seed
checkpoints, stacked back for ``--resume``), ``fused.early_stopping`` and ``fused.checks``
(why a run cannot be fused, so it trains seed after seed instead).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from lightning_hpo.builtin.supervised import (
    HITS,
    SSE,
    SUM_Y,
    SUM_YY,
    VAL_LOSS_SUM,
    SupervisedModule,
    is_class_target,
    r2_score,
)
from lightning_hpo.fused.seeds import SeedStates, seed_metric
from lightning_hpo.fused.stacking import (
    Mode,
    clip_grad_norm_per_seed,
    run_stacked,
)
from lightning_hpo.metrics import TRAIN_LOSS, VAL_ACC, VAL_LOSS, VAL_R2


class FusedModule(SupervisedModule):
    """``SupervisedModule`` for S seeds at once: ``net`` is the stacked network.

    Each seed's loss is the criterion on its own slice, and the step minimises their
    sum, so every seed's gradient is exactly its own. A seed that early stopping
    stopped (``states``) keeps its weights: they are put back after every optimizer step.
    Every metric is logged per seed and as the seeds' mean (``_log_per_seed``).

    Its hyperparameters are a one-seed module's (``mode`` and ``states`` are left out), so
    each seed's checkpoint (``SeedCheckpointIO``) loads with
    ``SupervisedModule.load_from_checkpoint``.
    """

    NOT_HYPERPARAMETERS = (*SupervisedModule.NOT_HYPERPARAMETERS, "mode", "states")

    def __init__(self, net: nn.Module, mode: Mode, states: SeedStates, **kwargs: Any):
        super().__init__(net=net, **kwargs)
        self.mode, self.states = mode, states
        self._kept: dict[int, list[torch.Tensor]] = {}

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        return run_stacked(self.net, self.mode, x, shared)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        shared = stage == "val"  # validation: one batch that every seed sees
        pred = self(x, shared=shared)
        losses = torch.stack(
            [self.criterion(pred[i], y if shared else y[i]) for i in range(pred.shape[0])]
        )
        n = x.shape[0] if shared else x.shape[1]
        self._accumulate(f"{stage}_loss", losses.detach(), n)
        self._count(stage, n)
        if shared and y.is_floating_point() and pred.shape[1:] == y.shape:
            y2 = y.reshape(n, -1)
            self._accumulate(SSE, (pred.detach().reshape(pred.shape[0], n, -1) - y2).pow(2).sum(1))
            self._accumulate(SUM_Y, y2.sum(0))
            self._accumulate(SUM_YY, y2.pow(2).sum(0))
        elif shared and pred.ndim == y.ndim + 2 and is_class_target(y):
            hits = pred.detach().argmax(2) == y  # [S, n, ...]
            self._accumulate(
                HITS, hits.flatten(1).sum(1, dtype=torch.float32) / (hits[0].numel() / n)
            )
        return losses.sum()

    def _log_per_seed(self, name: str, values: torch.Tensor, *, same_on_every_rank: bool) -> None:
        """The seeds' mean as ``name`` and each seed's value; ``same_on_every_rank``: already
        reduced over the ranks (``_log_epoch_value``), else averaged over them by Lightning."""
        log = self._log_epoch_value if same_on_every_rank else partial(self.log, sync_dist=True)
        log(name, values.mean())
        for seed, value in zip(self.states.seeds, values):
            log(seed_metric(name, seed), value)

    def on_validation_epoch_end(self):
        popped = self._pop_val_sums()
        if popped is None:
            return
        sums, n = popped  # the loss, R² and hits sums per seed; SUM_Y and SUM_YY shared
        self._log_per_seed(VAL_LOSS, sums[VAL_LOSS_SUM] / n, same_on_every_rank=True)
        if SSE in sums:
            self._log_per_seed(VAL_R2, r2_score(sums, n).mean(-1), same_on_every_rank=True)
        if HITS in sums:
            self._log_per_seed(VAL_ACC, sums[HITS] / n, same_on_every_rank=True)

    def _log_train_loss(self) -> None:
        train_loss = self._pop_mean("train")
        if train_loss is not None:
            self._log_per_seed(TRAIN_LOSS, train_loss, same_on_every_rank=False)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """``trainer_config.gradient_clip_val`` by norm clips each seed by its own gradients'
        norm, as that seed alone would be (``stacking.clip_grad_norm_per_seed``); clipping
        by value is element-wise, so Lightning's own already is per seed."""
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            clip_grad_norm_per_seed(params, float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        if not self.states.stopped_at:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        params = list(self.net.parameters())
        for index, seed in enumerate(self.states.seeds):
            if seed in self.states.stopped_at and index not in self._kept:
                self._kept[index] = [p.detach()[index].clone() for p in params]
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        with torch.no_grad():
            for index, kept in self._kept.items():
                for p, value in zip(params, kept):
                    p[index].copy_(value)
