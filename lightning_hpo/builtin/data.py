"""Data: the built-in synthetic regression and classification tasks, and the DataModule that
serves any (train, val) pair.

Tensor datasets are served straight from memory: one permutation per epoch, then
slicing. Per-sample DataLoader collation costs more than the MLP's forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from lightning_hpo.config.imports import accepted_kwargs


def synthetic_regression(
    n: int = 10_000, noise: float = 0.05, val_fraction: float = 0.2, seed: int = 42
) -> tuple[TensorDataset, TensorDataset]:
    """The default task: y = sin(4πx) + 0.5·sin(10πx) + 1.5x² + N(0, noise²), x ~ U(0, 1).

    The generator seed is fixed so every run and trial sees the same split.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g)
    y = torch.sin(4 * math.pi * x) + 0.5 * torch.sin(10 * math.pi * x) + 1.5 * x**2
    y = y + noise * torch.randn(n, 1, generator=g)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=g)
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def synthetic_classification(
    n: int = 6_000,
    classes: int = 3,
    noise: float = 0.3,
    turns: float = 1.5,
    val_fraction: float = 0.2,
    seed: int = 42,
) -> tuple[TensorDataset, TensorDataset]:
    """The classification example: ``classes`` interleaved spiral arms in the plane.

    Point i of arm k lies at radius r ~ U(0, 1) and angle 2π·turns·r + 2πk/classes, plus
    N(0, noise²·r) jitter on the angle and N(0, (noise/10)²) on each coordinate: the arms
    wind around each other (no straight line separates them) and overlap near the centre,
    so accuracy climbs with the network's capacity and training, short of 1.

    Returns (train, val) TensorDatasets of x [N, 2] float and y [N] int64 class indices.
    The generator seed is fixed so every run and trial sees the same split.
    """
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    r = torch.rand(n, generator=g)
    angle = 2 * math.pi * (turns * r + y / classes) + noise * r.sqrt() * torch.randn(n, generator=g)
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    x = x + noise / 10 * torch.randn(n, 2, generator=g)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=g)
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class TensorBatches:
    """Batches of in-memory tensors: one permutation per epoch (when shuffling), then slices.


    Under data-parallel training each of ``world_size`` ranks takes every
    ``world_size``-th sample of the (shared, seeded) permutation. When the samples do not
    divide evenly, a training permutation (``shuffle``) is padded with its own first
    samples, as ``DistributedSampler`` pads: every rank then takes as many batches, so none
    waits for a gradient all-reduce that another rank never joins. Validation
    (``shuffle=False``) is not padded, so no sample counts twice in its metrics: shares
    differ by one sample at most, and ranks by one batch, which validation allows (no
    gradient to all-reduce; DDP syncs buffers on the first batch only).
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch: Callable[[], int] | None = None,
    ):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.shuffles = [_Shuffle(seed, len(tensors[0]))]
        self.epoch = epoch  # the epoch an iteration serves (the Trainer's), else one after another

    def _orders(self) -> list[torch.Tensor]:
        """This epoch's permutation of each shuffle, this rank's share of it."""
        epoch = self.epoch() if self.epoch is not None else None
        return [self._share(shuffle.order(epoch)) for shuffle in self.shuffles]

    def _share(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's samples of ``order``; for training, padded to a multiple of the world
        size first."""
        if self.world_size == 1:
            return order
        padding = -len(order) % self.world_size if self.shuffle else 0
        if padding:
            order = torch.cat([order, order.repeat(math.ceil(padding / len(order)))[:padding]])
        return order[self.rank :: self.world_size]

    def _size(self) -> int:
        n = len(self.tensors[0])
        if self.shuffle:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self._size() / self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        if self.shuffle:
            order = self._orders()[0]
            tensors = [t[order.to(t.device)] for t in self.tensors]
        elif self.world_size > 1:
            order = self._share(torch.arange(len(self.tensors[0])))
            tensors = [t[order.to(t.device)] for t in self.tensors]
        else:
            tensors = self.tensors
        for start in range(0, len(tensors[0]), self.batch_size):
            yield [t[start : start + self.batch_size] for t in tensors]


class _Shuffle:
    """The seeded permutations of one run, epoch after epoch.

    ``order(e)`` is the permutation epoch ``e`` of an uninterrupted run draws, so a
    resumed run (which starts at a later epoch) sees the same orders.
    """

    def __init__(self, seed: int, n: int):
        self.seed, self.n = seed, n
        self.generator, self.next_epoch = torch.Generator().manual_seed(seed), 0

    def order(self, epoch: int | None = None) -> torch.Tensor:
        if epoch is not None and epoch != self.next_epoch:
            self.generator, self.next_epoch = torch.Generator().manual_seed(self.seed), 0
            for _ in range(epoch):
                torch.randperm(self.n, generator=self.generator)
            self.next_epoch = epoch
        self.next_epoch += 1
        return torch.randperm(self.n, generator=self.generator)


class EpochShuffle(Sampler[int]):
    """The seeded shuffle of a dataset that is not in-memory tensors: epoch ``e`` serves the
    permutation an uninterrupted run serves at ``e`` (``_Shuffle``, as ``TensorBatches``),
    so a resumed run replays the epoch it resumes at. (A ``DataLoader``'s own shuffle
    restarts its generator, serving epoch 0's order again.)
    """

    def __init__(self, n: int, seed: int, epoch: Callable[[], int] | None = None):
        self.shuffle, self.epoch = _Shuffle(seed, n), epoch

    def __len__(self) -> int:
        return self.shuffle.n

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch() if self.epoch is not None else None
        return iter(self.shuffle.order(epoch).tolist())


class SeedBatches(TensorBatches):
    """One training batch per seed at each step, stacked: ``[S, B, ...]``.

    Row ``s`` is the batch ``TensorBatches`` gives seed ``s`` alone: the same seeded
    shuffle draws the same permutation, epoch after epoch.
    """

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        seeds: list[int],
        rank: int = 0,
        world_size: int = 1,
        epoch: Callable[[], int] | None = None,
    ):
        super().__init__(
            tensors, batch_size, shuffle=True, rank=rank, world_size=world_size, epoch=epoch
        )
        self.shuffles = [_Shuffle(seed, len(tensors[0])) for seed in seeds]

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        order = torch.stack(self._orders())
        tensors = [t[order.to(t.device)] for t in self.tensors]
        for start in range(0, order.shape[1], self.batch_size):
            yield [t[:, start : start + self.batch_size] for t in tensors]


class StackedLoaders:
    """One DataLoader per seed, each shuffled by its own seeded generator, batch by batch stacked."""

    def __init__(self, loaders: list[DataLoader]):
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        for batches in zip(*self.loaders):
            yield [torch.stack(parts) for parts in zip(*batches)]


def _check_validation_size(n: int, world: int) -> None:
    """Refuse fewer validation samples than ranks: a rank without one would skip validation
    while the others wait for it in the epoch's all-reduce of the metrics' sums."""
    if n < world:
        raise ValueError(
            f"the validation set has {n} sample{'' if n == 1 else 's'} to validate on, fewer "
            f"than the {world} devices: each device validates at least one"
        )


class SupervisedData(pl.LightningDataModule):
    """Serves a (train, val) pair of datasets; TensorDatasets from memory, others via DataLoader.

    Args:
        train, val: the datasets.
        batch_size: training and validation batch size.
        seed: seeds the per-epoch shuffle.

    In-memory tensors move once to the training device, so batches need no copy each step.
    """

    def __init__(self, train: Dataset, val: Dataset, batch_size: int, seed: int = 0):
        super().__init__()
        self.train, self.val, self.batch_size, self.seed = train, val, batch_size, seed
        self.fused_seeds: list[int] | None = None  # set by fuse(): one training batch per seed

    def for_seed(self, seed: int) -> SupervisedData:
        """The same datasets, shuffled by ``seed``: what that seed trains on alone."""
        if seed == self.seed and self.fused_seeds is None:
            return self
        return SupervisedData(self.train, self.val, self.batch_size, seed)

    def fuse(self, seeds: list[int]) -> SupervisedData:
        """Serve stacked training batches, each seed's from its own shuffle (fused seeds)."""
        self.fused_seeds = list(seeds)
        return self

    def _placement(self) -> tuple[torch.device, int, int, Callable[[], int] | None]:
        """Device, rank, world size, and where to read the epoch being trained (a resumed
        run starts later than epoch 0)."""
        trainer = self.trainer
        if trainer is None:
            return torch.device("cpu"), 0, 1, None
        return (
            trainer.strategy.root_device,
            trainer.global_rank,
            trainer.world_size,
            lambda: trainer.current_epoch,
        )

    def _loader(self, dataset: Dataset, shuffle: bool):
        device, rank, world, epoch = self._placement()
        if world > 1 and not shuffle:
            _check_validation_size(len(dataset), world)  # type: ignore[arg-type]
        if isinstance(dataset, TensorDataset):
            tensors = tuple(t.to(device) for t in dataset.tensors)
            return TensorBatches(tensors, self.batch_size, shuffle, self.seed, rank, world, epoch)
        return self._dataloader(dataset, shuffle, self.seed)

    def _dataloader(self, dataset: Dataset, shuffle: bool, seed: int) -> DataLoader:
        """A DataLoader for datasets that are not in-memory tensors, shuffled by ``seed``
        epoch by epoch (``EpochShuffle``). On several ranks, validation takes this rank's
        share unpadded (``UnrepeatedDistributedSampler``, which Lightning leaves in place);
        training's sampler Lightning wraps in a padding ``DistributedSampler``."""
        _, rank, world, epoch = self._placement()
        if shuffle:
            sampler = EpochShuffle(len(dataset), seed, epoch)
        elif world > 1:
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=False
            )
        else:
            sampler = None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # In-memory batches are already on the device (TensorBatches): skip Lightning's
        # recursive walk over the batch, which costs more per step than a small MLP's forward.
        if isinstance(batch, list) and all(
            torch.is_tensor(t) and t.device == device for t in batch
        ):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self):
        if self.fused_seeds is None:
            return self._loader(self.train, shuffle=True)
        device, rank, world, epoch = self._placement()
        if isinstance(self.train, TensorDataset):
            tensors = tuple(t.to(device) for t in self.train.tensors)
            return SeedBatches(tensors, self.batch_size, self.fused_seeds, rank, world, epoch)
        # Single device only (fused.blocker): each loader shuffles as that seed's run alone would.
        return StackedLoaders([self._dataloader(self.train, True, s) for s in self.fused_seeds])

    def val_dataloader(self):
        return self._loader(self.val, shuffle=False)


def build_datamodule(
    factory: Any, kwargs: dict, batch_size: int, seed: int
) -> pl.LightningDataModule:
    """Build the DataModule a config's ``data:`` names: a DataModule class or a (train, val) factory."""
    if isinstance(factory, type) and issubclass(factory, pl.LightningDataModule):
        params = dict(kwargs)
        accepted = accepted_kwargs(factory)
        if accepted is None or "batch_size" in accepted:
            params.setdefault("batch_size", batch_size)
        return factory(**params)
    result = factory(**kwargs)
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise TypeError(
            f"{getattr(factory, '__qualname__', factory)} must return (train_dataset, val_dataset), got {type(result).__name__}"
        )
    train, val = result
    return SupervisedData(train, val, batch_size, seed)


def feature_sizes(dm: pl.LightningDataModule) -> tuple[int, int]:
    """(in_features, out_features) from the first training batch of ``dm``, set up for
    ``fit`` with a throwaway Trainer attached (``training.prepared.setup_outside_fit``); for
    integer class targets held in memory, the number of classes from all of them (one batch
    may miss a class)."""
    from lightning_hpo.training.prepared import setup_outside_fit

    setup_outside_fit(dm)
    x, y = next(iter(dm.train_dataloader()))[:2]
    if y.ndim > 1:
        return x.shape[-1], y.shape[-1]
    if y.is_floating_point():
        return x.shape[-1], 1
    train = getattr(dm, "train", None)
    if isinstance(train, TensorDataset) and len(train.tensors) > 1:
        y = train.tensors[1]
    return x.shape[-1], int(y.max()) + 1
