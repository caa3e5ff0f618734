"""Command lines. Thin: parse arguments, call a package function, report errors on one line.

Heavy imports (torch, Lightning, Optuna) happen inside the commands, so ``--help``
and config errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lightning_hpo.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_NO_TRIAL_COMPLETED,
    EXIT_RUN_FAILED,
    EXIT_TERMINATED,
    version_argument,
)
from lightning_hpo.cli.init import init_main
from lightning_hpo.cli.report import report_main
from lightning_hpo.cli.train import train_main
from lightning_hpo.cli.tune import tune_main

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_NO_TRIAL_COMPLETED",
    "EXIT_RUN_FAILED",
    "EXIT_TERMINATED",
    "init_main",
    "main",
    "report_main",
    "train_main",
    "tune_main",
]


# --------------------------------------------------------------------------- tune.py report


# --------------------------------------------------------------------------- lightning-hpo


# `lightning-hpo <command>` and `python -m lightning_hpo <command>`.
COMMANDS: dict[str, Callable[[Sequence[str] | None, str], int]] = {
    "train": train_main,
    "tune": tune_main,
    "report": report_main,
    "init": init_main,
}


def main(argv: Sequence[str] | None = None, prog: str = "lightning-hpo") -> int:
    """``lightning-hpo train|tune|report|init ...``: the same commands as ``train.py``,
    ``tune.py``, ``tune.py report``, plus ``init``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:], f"{prog} {argv[0]}")
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train PyTorch Lightning models from YAML configs and tune them with Optuna. "
        "`lightning-hpo <command> --help` describes a command.",
    )
    p.add_argument(
        "command",
        choices=list(COMMANDS),
        help="train: train.py; tune: tune.py; report: tune.py report; init: write the config templates",
    )
    version_argument(p)
    p.parse_args(argv)  # --help, --version, or a usage error: each exits here
    return EXIT_BAD_INPUT
