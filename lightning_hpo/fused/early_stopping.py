"""Early stopping per seed in a fused run: a seed stops recording once its metric stops improving, the run once every seed has."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_hpo.fused.seeds import SeedStates, seed_metric


class SeedEarlyStopping(Callback):
    """Early stopping per seed of a fused run: a seed whose ``monitor`` stalls stops
    (the module keeps its weights from then on); the Trainer stops when all have.

    The rule is Lightning's ``EarlyStopping``'s, applied to each seed's own metric: an
    improvement beats the best by more than ``min_delta``; ``patience`` epochs without
    one, or a non-finite value, stop the seed.
    """

    def __init__(
        self, states: SeedStates, monitor: str, patience: int, min_delta: float, mode: str
    ):
        self.states, self.monitor, self.patience, self.mode = states, monitor, patience, mode
        self.min_delta = abs(min_delta) * (1 if mode == "max" else -1)
        worst = -math.inf if mode == "max" else math.inf
        self.best = {seed: torch.tensor(worst) for seed in states.seeds}
        self.wait = {seed: 0 for seed in states.seeds}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        better = torch.gt if self.mode == "max" else torch.lt
        for seed in self.states.seeds:
            value = trainer.callback_metrics.get(seed_metric(self.monitor, seed))
            if seed in self.states.stopped_at or value is None:
                continue
            current = value.detach().float().cpu()
            if not torch.isfinite(current):
                self.states.stop(seed, epoch)
            elif better(current - self.min_delta, self.best[seed].to(current.dtype)):
                self.best[seed], self.wait[seed] = current, 0
            else:
                self.wait[seed] += 1
                if self.wait[seed] >= self.patience:
                    self.states.stop(seed, epoch)
        if self.states.all_stopped():
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": {s: float(v) for s, v in self.best.items()},
            "wait": dict(self.wait),
            "stopped_at": dict(self.states.stopped_at),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed group may hold fewer seeds than the run that saved the state.
        mine = set(self.states.seeds)
        self.best = {s: torch.tensor(v) for s, v in state_dict["best"].items() if s in mine}
        self.wait = {s: v for s, v in state_dict["wait"].items() if s in mine}
        self.states.stopped_at.update(
            {s: v for s, v in state_dict["stopped_at"].items() if s in mine}
        )
