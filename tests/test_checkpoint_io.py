"""How checkpoint files are written: whole, in order, with the state as it was when saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_hpo.training.checkpoint_io import AtomicCheckpointIO, BackgroundCheckpointIO


def test_a_saved_checkpoint_holds_the_state_of_its_save_not_of_its_write(tmp_path: Path) -> None:
    io = BackgroundCheckpointIO()
    weights = torch.zeros(3)
    state = {"state_dict": {"w": weights}, "epoch": 0}
    for epoch in range(5):  # training goes on while the writes are queued
        io.save_checkpoint(state | {"epoch": epoch}, tmp_path / f"e{epoch}.ckpt")
        weights += 1
    io.copy_when_written(tmp_path / "e4.ckpt", tmp_path / "best.ckpt")
    # A later write of the same file leaves the copy as it was (the copy may be a hard link).
    io.save_checkpoint(state | {"epoch": 99}, tmp_path / "e4.ckpt")
    io.copy_when_written(tmp_path / "e4.ckpt", tmp_path / "e99.ckpt")
    io.teardown()  # waits for every write
    assert torch.load(tmp_path / "e99.ckpt", weights_only=True)["epoch"] == 99
    for epoch in range(4):
        saved = torch.load(tmp_path / f"e{epoch}.ckpt", weights_only=True)
        assert saved["epoch"] == epoch and saved["state_dict"]["w"].tolist() == [epoch] * 3
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def test_a_failed_background_write_is_raised_on_the_training_thread(tmp_path: Path) -> None:
    io = BackgroundCheckpointIO()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError):  # by this save, the next one, or the trainer's teardown
        io.save_checkpoint({"epoch": 0}, tmp_path / "file" / "last.ckpt")
        io.teardown()


def test_a_checkpoint_replaces_the_previous_one_whole(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"  # its folder is created
    io.save_checkpoint({"w": torch.ones(1000)}, path)
    io.save_checkpoint({"w": torch.zeros(10)}, path)
    assert torch.load(path, weights_only=True)["w"].tolist() == [0.0] * 10
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
