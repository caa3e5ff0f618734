"""Our Lightning callbacks: what each run records, checkpoints and stops on."""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_hpo.console import is_quiet, quiet_lightning
from lightning_hpo.fused.seeds import SeedStates, seed_metric
from lightning_hpo.metrics import require_logged
from lightning_hpo.training.files import BEST, LAST
from lightning_hpo.training.results import SeedResult

# The key under which RunRecorder hands each seed's history back from spawned DDP ranks.
HISTORY_KEY = "lightning_hpo/history"


class RunRecorder(Callback):
    """Records each seed's monitored metric after every real validation, and logs hparams at the end.

    With one seed the metric is ``monitor`` itself; in a fused run seed ``s`` records
    ``monitor/seed_<s>`` until the epoch early stopping stopped it (``states``). The
    sanity check is never recorded. A metric that is never logged fails fast, listing
    the ones that are. The hyperparameters go to every logger (each seed's own run) with
    the final and best metric however training ends (finished, early-stopped, pruned or
    interrupted), before Lightning closes the logger. ``on_epoch(epoch, {seed: value})``, where
    given, is told each epoch's recorded values (epochs counted from 1): the live display.

    Under a spawn-based strategy (ddp_spawn) the ranks train in other processes, on
    copies of this callback: at the end of training each history is put into
    ``trainer.callback_metrics``, which Lightning carries back to the main process. The
    copies also apply ``quiet_lightning`` when the main process did.
    """

    def __init__(
        self,
        results: Sequence[SeedResult],
        monitor: str,
        hparams: dict[str, Any],
        states: SeedStates | None = None,
        on_epoch: Callable[[int, dict[int, float]], None] | None = None,
    ):
        self.results, self.monitor, self.hparams, self.states = (
            list(results),
            monitor,
            hparams,
            states,
        )
        self.on_epoch = on_epoch

    def _key(self, seed: int) -> str:
        return self.monitor if self.states is None else seed_metric(self.monitor, seed)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned rank tells no display: the display lives in this process.
        return self.__dict__ | {"_quiet": is_quiet(), "on_epoch": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        if state.pop("_quiet", False):
            quiet_lightning()  # unpickled in a spawned rank, before it logs anything
        self.__dict__.update(state)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking:
            return
        if self.monitor not in metrics:
            if self.monitor.startswith("val") or trainer.current_epoch > 0:
                require_logged(self.monitor, metrics, source="the monitored metric")
            return
        recorded = {}
        for result in self.results:
            if self.states is None or self.states.training(result.seed, trainer.current_epoch):
                result.history.append(float(metrics[self._key(result.seed)]))
                recorded[result.seed] = result.history[-1]
        if self.on_epoch is not None:
            self.on_epoch(trainer.current_epoch + 1, recorded)

    # The histories ride in every checkpoint, so a resumed run's results cover all its epochs.
    def state_dict(self) -> dict[str, Any]:
        return {"histories": {r.seed: list(r.history) for r in self.results}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        histories = state_dict.get("histories", {})
        for r in self.results:
            r.history[:] = histories.get(r.seed, [])

    def _log_hparams(self, trainer: pl.Trainer) -> None:
        if trainer.logger is None or not trainer.is_global_zero:
            return
        for_seed = getattr(trainer.logger, "for_seed", None)  # fused.SeedLoggers: one run per seed
        for r in self.results:
            final = {f"final_{self.monitor}": r.final, f"best_{self.monitor}": r.best}
            final = {k: v for k, v in final.items() if math.isfinite(v)}
            for logger in for_seed(r.seed) if for_seed else trainer.loggers:
                if isinstance(logger, TensorBoardLogger):  # its HParams tab pairs them
                    logger.log_hyperparams(self.hparams | {"seed": r.seed}, final)
                else:
                    logger.log_hyperparams(self.hparams | {"seed": r.seed})
                    logger.log_metrics(final, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_hparams(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_end also runs when a resumed run had no epoch left to train.
        for r in self.results:
            trainer.callback_metrics[f"{HISTORY_KEY}/{r.seed}"] = torch.tensor(
                r.history, dtype=torch.float64
            )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._log_hparams(trainer)

    def collect(self, trainer: pl.Trainer) -> None:
        """After ``fit``: take the histories the ranks (or this process) handed back."""
        for r in self.results:
            history = trainer.callback_metrics.get(f"{HISTORY_KEY}/{r.seed}")
            if history is not None:
                r.history[:] = history.tolist()


def improved(current: float, best: float | None, mode: str) -> bool:
    """``ModelCheckpoint``'s rule: strictly better than the best so far, and never NaN or inf."""
    return math.isfinite(current) and (
        best is None or (current > best if mode == "max" else current < best)
    )


class RunCheckpoints(Callback):
    """A run's ``last.ckpt`` every epoch (for ``--resume`` and a retried trial) and its
    ``best.ckpt`` when the monitored metric improved.

    One state dump per epoch: a new best is a copy of the ``last.ckpt`` just dumped. The
    trainer writes in the background (``BackgroundCheckpointIO``, see ``fit_seed``), so the
    copy is queued behind that write; each file is replaced whole (written aside, then
    renamed). The best score is updated before the dump, so ``last.ckpt`` resumes with it.
    """

    def __init__(self, dirpath: Path, monitor: str, mode: str, save_best: bool, save_last: bool):
        self.dirpath, self.monitor, self.mode = Path(dirpath), monitor, mode
        self.save_best, self.save_last = save_best, save_last
        self.best: float | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        better = (
            self.save_best and value is not None and improved(float(value), self.best, self.mode)
        )
        if better:
            self.best = float(value)
        last, best = self.dirpath / f"{LAST}.ckpt", self.dirpath / f"{BEST}.ckpt"
        if self.save_last:
            trainer.save_checkpoint(last)
            if better and trainer.is_global_zero:  # the rank that writes
                trainer.strategy.checkpoint_io.copy_when_written(last, best)
        elif better:
            trainer.save_checkpoint(best)

    def state_dict(self) -> dict[str, Any]:
        return {"best_model_score": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best_model_score")


class DieWithParent(Callback):
    """In a rank a spawn-based strategy started (``ddp_spawn``): die with the process that
    started it, even when that one is SIGKILLed, instead of waiting forever in a collective
    and holding its memory (on a GPU, the GPU). In the starting process itself: nothing.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere a no-op.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        parent = multiprocessing.parent_process()
        if parent is None or not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent.pid:  # it died before the request was made
            os.kill(os.getpid(), signal.SIGKILL)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
