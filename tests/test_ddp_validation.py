"""Validation under DDP: every rank validates its own share of the validation set, each
sample once, and the built-in modules' metrics are the whole set's, whatever the number of
ranks."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from lightning_hpo.builtin.data import SupervisedData, TensorBatches


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
