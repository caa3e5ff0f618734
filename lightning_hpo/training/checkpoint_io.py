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
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from lightning_hpo.training.files import copy_atomically


def serialise(checkpoint: dict[str, Any]) -> memoryview:
    """``checkpoint`` as ``torch.save`` writes it, in memory."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getbuffer()


def write_atomically(data: memoryview, path: Path) -> None:
    """Write ``data`` to ``path`` so that a reader never sees half a file: written aside in
    one write, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as fh:
        fh.write(data)
    os.replace(temporary, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local files are written by ``save_atomically``; remote
    paths and storage options go to Lightning's own writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        write_atomically(serialise(checkpoint), Path(path))


class BackgroundCheckpointIO(AsyncCheckpointIO):
    """Checkpoints serialised on the training thread and written by one background thread,
    in order (the executor of Lightning's ``AsyncCheckpointIO``), each file whole. A queued
    copy (``copy_when_written``) runs once the writes before it have landed."""

    def __init__(self) -> None:
        super().__init__(AtomicCheckpointIO())

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
        if storage_options is not None or "://" in str(path):  # Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        data = serialise(checkpoint)
        self._submit(lambda: write_atomically(data, Path(path)))

    def copy_when_written(self, source: Path, target: Path) -> None:
        self._submit(lambda: copy_atomically(source, target))
