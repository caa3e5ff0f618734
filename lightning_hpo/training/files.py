"""What a run folder (``runs/<project>/<group>/<seed>/``) holds, named once for the code
that writes it (training, fused seeds) and the code that reads it back (``load_run``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning_hpo.errors import ConfigError

CONFIG_FILE = "config.yaml"  # the resolved run config of this seed: trains it again
CHECKPOINT_DIR = "checkpoints"
BEST, LAST = "best", "last"  # the checkpoints' names, without the ``.ckpt`` suffix


def checkpoint_file(run_dir: str | Path, which: str) -> Path:
    """``run_dir/checkpoints/<which>.ckpt``."""
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.ckpt"


def copy_atomically(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` so that a reader never sees half a file."""
    temporary = target.with_suffix(".tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def check_writable(folder: str | Path, source: str) -> None:
    """Refuse an output folder that cannot be written, without creating it."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            source,
            None,
            f"cannot write to {existing}",
            "choose a writable folder or fix its permissions",
        )
