"""User-side components that tests name only by import path in YAML, as a user would.

Importable as ``user_components`` (tests/ is on sys.path; see conftest.py).
"""

from __future__ import annotations

import os
import signal
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.demos.boring_classes import BoringModel, DemoModel, RandomDataset
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_hpo.builtin.mlp import MLP
from lightning_hpo.builtin.supervised import SupervisedModule

IN_FEATURES, OUT_FEATURES = 3, 2
USER_METRIC = "val_mae"  # logged by MAEModule only


def three_to_two(n: int = 240, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, val) TensorDatasets with 3 input features and 2 outputs: y = x @ W."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_FEATURES, generator=g)
    w = torch.randn(IN_FEATURES, OUT_FEATURES, generator=g)
    y = x @ w
    cut = n * 3 // 4
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class PairDataset(Dataset):
    """A plain map-style dataset (not a TensorDataset): item i is (x_i, y_i)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def plain_datasets(n: int = 120, seed: int = 0) -> tuple[PairDataset, PairDataset]:
    """Like three_to_two, but as PairDatasets, so SupervisedData must use a DataLoader."""
    train, val = three_to_two(n, seed)
    return PairDataset(*train.tensors), PairDataset(*val.tensors)


class TinyNet(nn.Module):
    """A user network the package has never heard of: one hidden layer of ``hidden`` units."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 4):
        super().__init__()
        self.hidden = hidden
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features)
        )

    def forward(self, x):
        return self.body(x)


class BatchNormNet(nn.Module):
    """Keeps BatchNorm running statistics: buffers updated in place, so it cannot be fused."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 8, momentum: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden, momentum=momentum),
            nn.GELU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x):
        return self.body(x)


class BranchyNet(nn.Module):
    """Data-dependent Python control flow: which layer runs depends on the batch's values."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 8):
        super().__init__()
        self.up = nn.Linear(in_features, hidden)
        self.pos, self.neg = nn.Linear(hidden, out_features), nn.Linear(hidden, out_features)

    def forward(self, x):
        h = torch.tanh(self.up(x))
        return self.pos(h) if h.mean() > 0 else self.neg(h)


class TrustRatioSGD(torch.optim.Optimizer):
    """A per-tensor optimizer that is not element-wise: each step is scaled by the tensor's
    norm over its update's norm (LARS/LAMB's trust ratio)."""

    def __init__(self, params, lr: float = 0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    ratio = p.norm() / p.grad.norm().clamp_min(1e-12)
                    p.add_(p.grad, alpha=-group["lr"] * float(ratio))
        return loss


class LayerNormNet(nn.Module):
    """Parameters outside nn.Linear (LayerNorm's) and no buffers: fuses through torch.func.vmap."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.LayerNorm(hidden),
            nn.SiLU(),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x):
        return self.body(x)


class FailingNet(nn.Module):
    """Raises in every forward: each trial using it fails."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.layer = nn.Linear(in_features, out_features)

    def forward(self, x):
        raise RuntimeError("this network always fails")


class LateFailingNet(FailingNet):
    """Trains ``steps`` batches, then raises: a failure that only real training meets (the
    preflight's one batch passes), so each trial using it fails."""

    def __init__(self, in_features: int, out_features: int, steps: int = 2):
        super().__init__(in_features, out_features)
        self.steps = steps

    def forward(self, x):
        if self.training:
            if self.steps <= 0:
                raise RuntimeError("this network fails after a few steps")
            self.steps -= 1
        return self.layer(x)


class MAEModule(SupervisedModule):
    """A user LightningModule: the built-in one plus a metric of its own, ``val_mae`` (the mean
    absolute error times ``scale``, an argument from ``module_config``)."""

    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self._abs: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch[0], batch[1]
        self._abs.append((self(x) - y).abs().flatten())

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        if self._abs:
            self.log(USER_METRIC, self.scale * torch.cat(self._abs).mean())
            self._abs.clear()


class DictBatches(pl.LightningDataModule):
    """Serves each batch as a dict ``{"x": ..., "y": ...}``, which only a module of its own
    (``DictModule``) reads; the network's sizes are then given in net_config."""

    def __init__(self, batch_size: int = 32, n: int = 96):
        super().__init__()
        train, val = three_to_two(n)
        self.batch_size = batch_size
        self.train_rows, self.val_rows = (
            [{"x": x, "y": y} for x, y in zip(*part.tensors)] for part in (train, val)
        )

    def train_dataloader(self):
        return DataLoader(self.train_rows, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_rows, batch_size=self.batch_size)


class DictModule(SupervisedModule):
    """The built-in module, reading ``{"x", "y"}`` batches."""

    def training_step(self, batch, batch_idx):
        return super().training_step([batch["x"], batch["y"]], batch_idx)

    def validation_step(self, batch, batch_idx):
        super().validation_step([batch["x"], batch["y"]], batch_idx)


class QuietModule(SupervisedModule):
    """Logs its own validation metric only, not ``val_loss`` (which train.py monitors)."""

    def on_validation_epoch_end(self):
        self._sums.clear()
        self.log("val_quiet", torch.tensor(1.0))


class NotAModule(nn.Module):
    """An nn.Module, but no LightningModule: refused as ``module``."""


class PickyMLP(MLP):
    """An MLP whose constructor rejects one inner point of a search space: 4 layers."""

    def __init__(self, in_features: int, out_features: int, nodes: int = 8, layers: int = 1):
        if layers == 4:
            raise ValueError("4 layers is not supported")
        super().__init__(in_features, out_features, nodes=nodes, layers=layers)


class OnceMetricModule(SupervisedModule):
    """Logs ``val_once`` the first time a module of its class validates in a process (the
    preflight's batch), never again: a metric a trial's epochs do not log."""

    validated = False

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        if not OnceMetricModule.validated:
            OnceMetricModule.validated = True
            self.log("val_once", 1.0)


class StuckRankModule(SupervisedModule):
    """From its second epoch, rank 0 waits in a collective that rank 1 never joins: a rank
    stuck in C++, where neither SIGINT nor SIGTERM reaches its Python handlers."""

    def on_train_epoch_start(self):
        if self.current_epoch == 1:
            if self.global_rank == 0:
                torch.distributed.barrier()
            else:  # stuck too, deaf to SIGINT and SIGTERM like a rank inside a collective
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                time.sleep(600)


# --------------------------------------------------------------------------- Lightning's demos
# lightning.pytorch.demos' classes are Lightning projects this package did not write; these
# subclasses add only the validation metric the demos do not log (and, for the schedule, the
# interval), nothing of this package's.


class LoggedDemoModel(DemoModel):
    """Lightning's ``DemoModel`` (its own ``out_dim`` and ``learning_rate``, its own Adam),
    logging ``val_loss``: the mean of what its training step minimises."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self(batch).sum(dim=1).mean())


class LoggedBoringModel(BoringModel):
    """Lightning's ``BoringModel`` (SGD and a StepLR stepped once an epoch, its own
    ``configure_optimizers``), logging ``val_loss``."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.step(batch))


class StepScheduledDemo(LoggedDemoModel):
    """``LoggedDemoModel`` with a schedule stepped after every optimizer step: lr / (1 + step)."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class CountingData(LightningDataModule):
    """A DataModule that records each hook of Lightning's contract it sees, in order, in
    ``CountingData.events`` (``init``, ``prepare_data``, ``setup:<stage>``) and, with
    ``record``, as ``<event> <pid>`` lines in that file (spawned ranks included). It serves
    random 32-feature samples as the demos' ``RandomDataset`` does, ``length`` of them for
    training; with ``pairs``, ``(x, y)`` pairs (y: x's first two features) for the built-in module.
    """

    events: list[str] = []

    def __init__(
        self, length: int = 64, batch_size: int = 16, pairs: bool = False, record: str = ""
    ):
        super().__init__()
        self.length, self.batch_size, self.pairs, self.record = length, batch_size, pairs, record
        self._event("init")

    def _event(self, name: str) -> None:
        CountingData.events.append(name)
        if self.record:
            with open(self.record, "a") as f:
                f.write(f"{name} {os.getpid()}\n")

    def prepare_data(self):
        self._event("prepare_data")

    def _dataset(self, n: int) -> Dataset:
        x = RandomDataset(32, n).data
        return TensorDataset(x, x[:, :2].clone()) if self.pairs else RandomDataset(32, n)

    def setup(self, stage: str):
        self._event(f"setup:{getattr(stage, 'value', stage)}")  # Lightning passes a str enum
        self.train_set, self.val_set = self._dataset(self.length), self._dataset(32)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TrainerReadingData(CountingData):
    """Reads its Trainer in ``setup``, as DDP-aware DataModules do; Lightning attaches one
    there (``self.trainer`` is None outside ``Trainer.fit``)."""

    def setup(self, stage: str):
        self.world_size = self.trainer.world_size
        super().setup(stage)


class NetOnlyModule(pl.LightningModule):
    """Takes the run's network but not its loss or optimizer: neither contract."""

    def __init__(self, net: nn.Module | None = None):
        super().__init__()
        self.net = net


class TeamTensorBoard(TensorBoardLogger):
    """A team's TensorBoard logger with its own layout: no ``version``/``default_hp_metric``."""

    def __init__(self, save_dir: str = "tb", name: str = "team"):
        super().__init__(save_dir=save_dir, name=name)


class SelfPlacedTensorBoard(TensorBoardLogger):
    """Sets its own save_dir and passes everything else on: lightning-hpo's save_dir clashes."""

    def __init__(self, **kwargs):
        super().__init__(save_dir="tb", **kwargs)
