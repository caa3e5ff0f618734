"""Command lines. Thin: parse arguments, call a package function, report errors on one line.

Heavy imports (torch, Lightning, Optuna) happen inside the commands, so ``--help``
and config errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from lightning_hpo.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def run_command(main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run ``main(args)``; a ConfigError becomes one line on stderr and exit status 2."""
    try:
        return main(args) or 0
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def check_writable(folder: str | Path, source: str) -> None:
    """Refuse an output folder that cannot be written, without creating it."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(source, None, f"cannot write to {existing}", "choose a writable folder or fix its permissions")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train the model a run config describes, once per seed.")
    p.add_argument("--config", default="configs/run_template.yaml", help="run config YAML (default: %(default)s)")
    p.add_argument("--device", help="override the config's device: auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs from their last checkpoint")
    p.add_argument("--output", default="runs", help="root folder for runs (default: %(default)s)")
    p.add_argument("--progress", action="store_true", help="show Lightning's per-batch progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _train(args: argparse.Namespace) -> int:
    from lightning_hpo.config import load_run_config

    cfg = load_run_config(args.config, {"device": args.device, "epochs": args.epochs})
    check_writable(args.output, "--output")

    from lightning_hpo.training import quiet_lightning, train

    quiet_lightning()

    def report(r) -> None:
        print(f"seed {r.seed}: final val_loss {r.final:.5g} (best {r.best:.5g}) after {len(r.history)} epochs, {r.seconds:.1f} s", flush=True)

    result = train(cfg, args.output, resume=args.resume, progress_bar=args.progress, on_seed=report, source=args.config)
    where = result.results[0].run_dir.parent
    print(f"final val_loss over {len(result.results)} seed(s): {result.mean:.5g} ± {result.std:.2g}")
    print(f"runs and checkpoints: {where}")
    print(f"TensorBoard: tensorboard --logdir {where.parent}")
    return 0


def train_main(argv: Sequence[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    return run_command(_train, args)
