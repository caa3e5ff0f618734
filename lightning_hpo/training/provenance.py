"""Provenance: what produced a run or a study, so a result can be traced back to its code.

The library versions (Python, torch, Lightning, Optuna, optuna-integration, lightning-hpo),
the git commit of the working directory and whether it had uncommitted changes (when it is
a repository and git is installed), the host, the device and the command line. Every run
folder gets it as ``provenance.yaml`` (``write``); a study keeps its creator's as a user
attribute (``attrs.PROVENANCE``). Nothing secret is recorded: a storage URL's password on
the command line is replaced by ``***`` (``storage.redact``).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lightning_hpo.config.yamlio import dump_yaml, load_yaml
from lightning_hpo.storage.connect import redact
from lightning_hpo.storage.signed import slurm_job

FILE = "provenance.yaml"

# Distribution names, in the order the record lists them.
PACKAGES = ("torch", "lightning", "optuna", "optuna-integration", "lightning-hpo")
GIT_TIMEOUT = 5.0  # seconds: a slow network file system must not hold a run up for long


def versions() -> dict[str, str]:
    """Python's and each installed package's version (a package not installed is left out)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_state(cwd: str | Path | None = None) -> dict[str, Any] | None:
    """``{commit, dirty}`` of the git repository holding ``cwd``; None when it is not one,
    git is missing or too slow.

    One ``git status`` call: the commit from its branch header, dirty when a tracked file
    differs from it (untracked files are not counted, as ``git describe --dirty``).
    ``GIT_OPTIONAL_LOCKS=0``: it must not take the index lock a concurrent commit needs.
    """
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    commit, dirty = None, False
    for line in proc.stdout.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split()[-1]
        elif not line.startswith("#"):
            dirty = True
    if commit is None or commit == "(initial)":
        return None  # a repository without a commit: nothing to point at
    return {"commit": commit, "dirty": dirty}


def device_name(device: str) -> str:
    """What ``device`` (a run config's) trains on: ``cpu``, the GPU's name, or ``mps``."""
    import torch

    if device in ("cpu", "mps"):
        return device
    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    index = int(device.split(":")[1]) if ":" in device else 0
    try:
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    except (RuntimeError, AssertionError, ValueError):
        return device


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command line, shell-quoted, with every URL's password replaced by ``***``
    (``--storage URL`` and ``--storage=URL`` alike)."""
    args = list(sys.argv if argv is None else argv)
    return shlex.join(redact(a) for a in args)


def devices(device: str = "auto", count: int | str = 1) -> dict[str, Any]:
    """What a run trains on: Lightning's accelerator and devices, and which GPUs this
    process may use (``CUDA_VISIBLE_DEVICES``, as ``tune.py --workers`` hands them out;
    None when unset)."""
    from lightning_hpo.config.lightning_args import accelerator_and_devices

    accelerator, chosen = accelerator_and_devices(device, count)
    return {
        "accelerator": accelerator,
        "devices": chosen,
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def collect(
    device: str = "auto",
    argv: Sequence[str] | None = None,
    cwd: str | Path | None = None,
    count: int | str = 1,
) -> dict[str, Any]:
    """The provenance record: versions, git (when there is one), host, device, command, time."""
    record: dict[str, Any] = {"versions": versions()}
    git = git_state(cwd)
    if git is not None:
        record["git"] = git
    record["host"] = socket.gethostname()
    job = slurm_job()
    if job:
        record["slurm_job_id"] = job
    record["device"] = device_name(device)
    record["devices"] = devices(device, count)
    record["command"] = command_line(argv)
    record["cwd"] = str(Path(cwd or os.getcwd()).resolve())
    record["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return record


def write(record: dict[str, Any], folder: str | Path) -> Path:
    """Write ``record`` as ``folder/provenance.yaml``. A run continued with ``--resume``
    keeps the record of the process that started it and adds its own under ``resumed``."""
    path = Path(folder) / FILE
    if path.exists():
        first = load_yaml(path)
        record = first | {"resumed": [*first.get("resumed", []), record]}
    dump_yaml(record, path)
    return path
