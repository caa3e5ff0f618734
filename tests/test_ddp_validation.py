"""Validation under DDP: every rank validates its own share of the validation set, each
sample once, and the built-in modules' metrics are the whole set's, whatever the number of
ranks."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_hpo.builtin.data import SupervisedData, TensorBatches
from lightning_hpo.training.runs import train

pytestmark = pytest.mark.usefixtures("quiet")

CSV = {"class_path": "lightning.pytorch.loggers.CSVLogger"}
# 165 samples: 33 to validate on, 17 and 16 on 2 ranks, so in batches of 16 rank 0 takes a
# batch more than rank 1. lr 0: the network never changes, so each rank count validates
# the same network (the seed's initial one) and must score it the same.
UNTRAINED = {
    "epochs": 1,
    "batch_size": 16,
    "data_config": {"n": 165},
    "optimizer": "torch.optim.SGD",
    "optimizer_config": {"lr": 0.0},
    "scheduler": None,
    "scheduler_config": {},
    "loggers": [CSV],
}
CLASSIFICATION = {
    "data": "lightning_hpo.builtin.synthetic_classification",
    "criterion": "torch.nn.CrossEntropyLoss",
}
R2, ACC = {"val_loss", "val_r2"}, {"val_loss", "val_acc"}
CASES = {  # id: (config, seeds, the metrics logged)
    "regression, one seed": ({}, [1], R2),
    "regression, fused seeds": ({}, [1, 2], R2),
    "classification, one seed": (CLASSIFICATION, [1], ACC),
    "classification, fused seeds": (CLASSIFICATION, [1, 2], ACC),
    # Not tensors: a DataLoader, its validation share an UnrepeatedDistributedSampler's.
    # 132 samples: 33 to validate on, 2 outputs (R² averages them).
    "dataset": ({"data": "user_components.plain_datasets", "data_config": {"n": 132}}, [1], R2),
    # BatchNorm buffers, which DDP syncs on the first validation batch; momentum 0 keeps
    # the running statistics where lr 0 keeps the weights.
    "buffers": (
        {"net": "user_components.BatchNormNet", "net_config": {"hidden": 8, "momentum": 0.0}},
        [1],
        R2,
    ),
}


def _val_metrics(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "metrics.csv") as f:
        (row,) = [row for row in csv.DictReader(f) if row.get("val_loss")]
    return {k: float(v) for k, v in row.items() if k.startswith("val_") and v}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_val_metrics_on_2_ranks_are_the_whole_validation_sets(
    small_config, user_components, tmp_path: Path, case
) -> None:
    overrides, seeds, logged = case
    scored = {}
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        cfg = small_config(
            **(UNTRAINED | overrides), seeds=seeds, devices=devices, strategy=strategy
        )
        result = train(cfg, tmp_path / str(devices))
        assert [r.together for r in result.results] == [len(seeds)] * len(seeds)  # fused or not
        scored[devices] = {r.seed: _val_metrics(r.run_dir) for r in result.results}
    for seed in seeds:
        assert set(scored[1][seed]) == logged
        assert scored[2][seed] == pytest.approx(scored[1][seed], rel=1e-5, abs=1e-6), seed
    if len(seeds) > 1:
        assert scored[1][1] != scored[1][2]  # each seed's own network, scored apart


def _shares(loader_for_rank, world: int) -> list[list[float]]:
    return [
        [v for batch in loader_for_rank(rank) for v in batch[1].tolist()] for rank in range(world)
    ]


@pytest.mark.parametrize("n", [7, 8, 33])
def test_each_rank_validates_its_own_samples_once_and_together_all_of_them(n: int) -> None:
    ys = torch.arange(n, dtype=torch.float32)
    tensors = (ys.unsqueeze(1), ys)
    shares = _shares(lambda rank: TensorBatches(tensors, 4, False, rank=rank, world_size=3), 3)
    assert sorted(v for share in shares for v in share) == ys.tolist()  # no sample twice
    assert [len(s) for s in shares] == [len(range(r, n, 3)) for r in range(3)]
    # Training still pads: every rank takes as many batches (DDP's gradient all-reduce).
    train_lengths = {len(TensorBatches(tensors, 4, True, rank=r, world_size=3)) for r in range(3)}
    assert len(train_lengths) == 1


class _Listed(Dataset):
    """A dataset that is not in-memory tensors: served through a DataLoader."""

    def __init__(self, n: int):
        self.items = [(torch.tensor([float(i)]), torch.tensor(float(i))) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class _Ranked:
    """What ``SupervisedData`` reads of the Trainer to place its data on one rank."""

    def __init__(self, rank: int, world: int):
        self.global_rank, self.world_size, self.current_epoch = rank, world, 0
        self.strategy = type("Strategy", (), {"root_device": torch.device("cpu")})()


@pytest.mark.parametrize("dataset", [TensorDataset, _Listed], ids=["tensors", "dataset"])
def test_validation_data_on_each_rank_is_its_share_of_the_set(dataset) -> None:
    n = 11
    val = (
        _Listed(n)
        if dataset is _Listed
        else TensorDataset(torch.zeros(n, 1), torch.arange(n) * 1.0)
    )

    def loader(rank: int):
        dm = SupervisedData(val, val, batch_size=4)
        dm.trainer = _Ranked(rank, 2)
        return dm.val_dataloader()

    shares = _shares(loader, 2)
    assert sorted(v for share in shares for v in share) == [float(i) for i in range(n)]
    assert [len(s) for s in shares] == [6, 5]


def test_a_validation_set_smaller_than_the_ranks_is_refused() -> None:
    val = TensorDataset(torch.zeros(1, 1), torch.zeros(1))
    dm = SupervisedData(val, val, batch_size=4)
    dm.trainer = _Ranked(1, 2)
    with pytest.raises(ValueError, match="1 sample to validate on, fewer than the 2 devices"):
        dm.val_dataloader()
