"""How a run's checkpoint files are written: each whole, in one write, and off the training
thread where it can be.

A run writes ``last.ckpt`` every epoch, so the cost of a write is paid every epoch.
Lightning's ``TorchCheckpointIO`` goes through fsspec for every file, and its
``AsyncCheckpointIO`` snapshots the state with the generic ``apply_to_collection``, then
pickles it on a background thread. Pickling holds the GIL: the training thread waits for
it (up to Python's 5 ms switch interval at a time) instead of training. Here the state is
serialised on the training thread, which is also its snapshot, and only the write (a
system call, without the GIL) is left to the background thread.
``benchmarks/bench_epoch.py`` measures both.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from lightning_hpo.training.files import copy_atomically, write_atomically


def serialise(checkpoint: dict[str, Any]) -> memoryview:
    """``checkpoint`` as ``torch.save`` writes it, in memory."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getbuffer()


def lightnings_own(path: Any, storage_options: Any) -> bool:
    """Whether a save goes to Lightning's own writer: a remote path, or storage options."""
    return storage_options is not None or "://" in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local files are written whole, in one write each
    (``write_atomically``); remote paths and storage options go to Lightning's own writer.
    What a file holds is ``encode``'s: the checkpoint itself, here."""

    def encode(self, checkpoint: dict[str, Any], path: Path) -> memoryview:
        """The bytes of the file at ``path`` for ``checkpoint``."""
        return serialise(checkpoint)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if lightnings_own(path, storage_options):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(self.encode(checkpoint, Path(path)), Path(path))


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Checkpoints encoded on the training thread by an ``AtomicCheckpointIO`` (the
    serialised bytes are the state's snapshot) and written by one background thread, in
    order (the executor of Lightning's ``AsyncCheckpointIO``), each file whole. A queued
    copy (``copy_when_written``) runs once the writes before it have landed. Loading is
    the wrapped IO's."""

    def __init__(self, checkpoint_io: AtomicCheckpointIO | None = None) -> None:
        super().__init__(checkpoint_io or AtomicCheckpointIO())

    def _submit(self, job) -> None:
        self._ensure_setup()

        def run() -> None:
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - raised by the next save or teardown
                self._error = exc

        self._executor.submit(run)
        if self._error:  # a write queued earlier failed
            raise self._error

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if lightnings_own(path, storage_options):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        data = self.checkpoint_io.encode(checkpoint, target)
        self._submit(lambda: write_atomically(data, target))

    def copy_when_written(self, source: Path, target: Path) -> None:
        self._submit(lambda: copy_atomically(source, target))
