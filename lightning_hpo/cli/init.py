"""``lightning-hpo init``: write the config templates out, to edit."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lightning_hpo.cli.common import (
    run_command,
    version_argument,
)


def init_parser(prog: str | None = "lightning-hpo init") -> argparse.ArgumentParser:
    """``init [DIR]``: its one argument, the folder to write ``configs/`` into."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write the run and optimize config templates to DIR/configs/, to edit. "
        "Never overwrites a file.",
    )
    p.add_argument("dir", nargs="?", default=".", help="project folder (default: %(default)s)")
    version_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _init(args: argparse.Namespace) -> int:
    from lightning_hpo.config.scaffold import init

    for path in init(args.dir):
        print(f"wrote {path}")
    where = "" if Path(args.dir) == Path(".") else f"cd {args.dir} && "
    print(f"next: {where}lightning-hpo-train (or lightning-hpo-tune)")
    return 0


def init_main(argv: Sequence[str] | None = None, prog: str | None = "lightning-hpo init") -> int:
    return run_command(_init, init_parser(prog).parse_args(argv))
