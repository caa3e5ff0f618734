"""Fused seeds: one Lightning Trainer trains all of a run's seeds at once.

The pieces ``training.fit_fused`` puts together:

* ``FusedModule`` trains a stacked network (``lightning_hpo.fused.stacking``) on one batch per
  seed, each from the seed's own shuffle (``data.SeedBatches``). It logs every metric
  per seed (``val_loss/seed_89``) and as the mean over the seeds under the plain name:
  the pruning callback reports that mean, once per epoch.
* ``SeedLoggers`` sends each seed's metrics to the seed's own TensorBoard run, and the
  means to a ``mean`` run beside them.
* ``SeedCheckpoints`` writes each seed's ``last.ckpt`` and ``best.ckpt``, and
  ``SeedCheckpointIO`` puts into a seed's folder only that seed's slice of the state, so
  each file is a one-seed checkpoint; on ``--resume`` it stacks the seeds' ``last.ckpt``
  back into the fused state.
* ``blocker`` says why a run cannot be fused, so it trains seed after seed instead.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from torch.utils.data import TensorDataset

from lightning_hpo.builtin.data import SupervisedData
from lightning_hpo.builtin.module import SupervisedModule, is_class_target
from lightning_hpo.fused.seeds import SeedStates, seed_metric, split_seed_metric
from lightning_hpo.fused.stacking import (
    Mode,
    clip_grad_norm_per_seed,
    merge_optimizer_states,
    merge_states,
    optimizer_blocker,
    run_stacked,
    split_optimizer_state,
    split_state,
    vectorise,
)
from lightning_hpo.metrics import TRAIN_LOSS, VAL_ACC, VAL_LOSS, VAL_R2
from lightning_hpo.training.files import BEST, LAST, checkpoint_file

# Written into each seed's checkpoint of a fused run: which slice it is, and what --resume needs.
FUSED_KEY = "lightning_hpo/fused"


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
        self._accumulate(f"{stage}_loss", losses.detach() * n)
        self._accumulate(f"{stage}_n", torch.tensor(float(n), device=losses.device))
        if shared and y.is_floating_point() and pred.shape[1:] == y.shape:
            y2 = y.reshape(n, -1)
            self._accumulate(
                "val_sse", (pred.detach().reshape(pred.shape[0], n, -1) - y2).pow(2).sum(1)
            )
            self._accumulate("val_sy", y2.sum(0))
            self._accumulate("val_syy", y2.pow(2).sum(0))
        elif shared and pred.ndim == y.ndim + 2 and is_class_target(y):
            hits = pred.detach().argmax(2) == y  # [S, n, ...]
            self._accumulate(
                "val_hits", hits.flatten(1).sum(1, dtype=torch.float32) / (hits[0].numel() / n)
            )
        return losses.sum()

    def _log_per_seed(self, name: str, values: torch.Tensor) -> None:
        self.log(name, values.mean(), sync_dist=True)
        for seed, value in zip(self.states.seeds, values):
            self.log(seed_metric(name, seed), value, sync_dist=True)

    def on_validation_epoch_end(self):
        n = self._sums.get("val_n")
        val_loss = self._pop_mean("val")
        if val_loss is None:
            return
        self._log_per_seed(VAL_LOSS, val_loss)
        sse, sy, syy = (self._sums.pop(k, None) for k in ("val_sse", "val_sy", "val_syy"))
        if sse is not None:
            sst = (syy - sy.pow(2) / n).clamp_min(torch.finfo(sse.dtype).tiny)
            self._log_per_seed(VAL_R2, (1 - sse / sst).mean(-1))
        hits = self._sums.pop("val_hits", None)
        if hits is not None:
            self._log_per_seed(VAL_ACC, hits / n)

    def _log_train_loss(self) -> None:
        train_loss = self._pop_mean("train")
        if train_loss is not None:
            self._log_per_seed(TRAIN_LOSS, train_loss)

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


class SeedCheckpointIO(TorchCheckpointIO):
    """Checkpoints of a fused run: a file in seed ``s``'s folder holds seed ``s`` alone.

    Its ``state_dict`` and optimizer state are that seed's slices (the single network's
    keys and shapes, loadable into a one-seed module); loops, schedulers and callback
    states are the run's. Loading a file from one seed's folder stacks the same file of
    every seed's folder back into the fused state, for ``--resume``.
    """

    def __init__(self, run_dirs: Sequence[Path], shapes: Sequence[torch.Size]):
        super().__init__()
        self.run_dirs = [Path(d).resolve() for d in run_dirs]
        self.shapes = list(shapes)

    def _index(self, path: Any) -> int | None:
        """The seed whose folder holds ``path``; None elsewhere (ddp_spawn's hand-over file)."""
        resolved = Path(path).resolve()
        for index, run_dir in enumerate(self.run_dirs):
            if run_dir in resolved.parents:
                return index
        return None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        index = self._index(path)
        if index is None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        one = dict(checkpoint)
        one["state_dict"] = split_state(checkpoint["state_dict"], index)
        split = [
            split_optimizer_state(s, index, self.shapes)
            for s in checkpoint.get("optimizer_states", [])
        ]
        one["optimizer_states"] = [state for state, _ in split]
        one[FUSED_KEY] = {
            "index": index,
            "seeds": len(self.run_dirs),
            "sliced": [sliced for _, sliced in split],
        }
        super().save_checkpoint(one, path, storage_options)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        index = self._index(path)
        if index is None:
            return super().load_checkpoint(path, map_location, weights_only)
        relative = Path(path).resolve().relative_to(self.run_dirs[index])
        parts = [
            super(SeedCheckpointIO, self).load_checkpoint(
                d / relative, map_location, weights_only=False
            )
            for d in self.run_dirs
        ]
        merged = dict(parts[0])
        merged["state_dict"] = merge_states([p["state_dict"] for p in parts])
        sliced = parts[0][FUSED_KEY]["sliced"]
        merged["optimizer_states"] = [
            merge_optimizer_states([p["optimizer_states"][i] for p in parts], sliced[i])
            for i in range(len(sliced))
        ]
        merged.pop(FUSED_KEY)
        return merged


class SeedCheckpoints(Callback):
    """Each seed's ``last.ckpt`` every epoch and its ``best.ckpt`` when its metric improved.

    One state dump per epoch serves every seed (``SeedCheckpointIO`` slices it per
    folder), and a seed's new best is a copy of the ``last.ckpt`` just written: the same
    files ``ModelCheckpoint`` and ``LastCheckpoint`` write for a seed trained alone, at a
    fraction of the cost of 2 x S callbacks dumping and pickling the state each.
    "Improved" is ``ModelCheckpoint``'s rule: strictly better, and never a NaN or inf.
    """

    def __init__(
        self,
        states: SeedStates,
        run_dirs: Sequence[Path],
        monitor: str,
        mode: str,
        save_best: bool,
        save_last: bool,
    ):
        self.states, self.run_dirs, self.monitor, self.mode = (
            states,
            [Path(d) for d in run_dirs],
            monitor,
            mode,
        )
        self.save_best, self.save_last = save_best, save_last
        self.best: dict[int, float] = {}

    def _improved(self, trainer: pl.Trainer) -> list[int]:
        improved = []
        for seed in self.states.seeds:
            value = trainer.callback_metrics.get(seed_metric(self.monitor, seed))
            if value is None or not self.states.training(seed, trainer.current_epoch):
                continue
            current = float(value)
            best = self.best.get(seed)
            if math.isfinite(current) and (
                best is None or (current > best if self.mode == "max" else current < best)
            ):
                self.best[seed] = current
                improved.append(seed)
        return improved

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        improved = self._improved(trainer) if self.save_best else []
        if not (self.save_last or improved):
            return
        # Lightning's own Trainer.save_checkpoint dumps the state anew for every file.
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        for seed, run_dir in zip(self.states.seeds, self.run_dirs):
            last, best = checkpoint_file(run_dir, LAST), checkpoint_file(run_dir, BEST)
            if self.save_last:
                trainer.strategy.save_checkpoint(checkpoint, last)
            if seed in improved:
                if self.save_last and trainer.is_global_zero:
                    _copy_atomically(last, best)
                elif not self.save_last:
                    trainer.strategy.save_checkpoint(checkpoint, best)
        trainer.strategy.barrier("SeedCheckpoints")

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))


def _copy_atomically(source: Path, target: Path) -> None:
    temporary = target.with_suffix(".tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def resumable(paths: Sequence[Path]) -> bool:
    """Whether these per-seed checkpoints are one fused run's state at one step: every
    seed's file exists, was written by a fused run of as many seeds, at the same step."""
    if not all(p.exists() for p in paths):
        return False
    steps = set()
    for index, path in enumerate(paths):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        marker = ckpt.get(FUSED_KEY)
        if not marker or marker["index"] != index or marker["seeds"] != len(paths):
            return False
        steps.add(ckpt.get("global_step"))
    return len(steps) == 1


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
    if module is not SupervisedModule:
        return (
            None,
            f"module {module.__module__}.{module.__qualname__} is not the built-in "
            f"{SupervisedModule.__module__}.{SupervisedModule.__qualname__}, whose steps fused training runs",
        )
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
