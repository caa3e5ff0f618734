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
    """Make ``target`` hold what ``source`` holds now, so that a reader never sees half a
    file: a hard link where the file system has them, else a copy, put in place by rename.

    A link is a copy here because checkpoints are never rewritten in place: a new
    ``last.ckpt`` is a new file renamed over the old one, and the link keeps the old one.
    """
    temporary = target.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # no hard links here (some network and FAT file systems)
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def write_atomically(data: bytes | memoryview, path: Path) -> None:
    """Write ``data`` to ``path`` so that a reader never sees half a file: written aside in
    one write, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as fh:
        fh.write(data)
    os.replace(temporary, path)


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
