"""``train.py`` (``lightning-hpo train``): train the model a run config describes, once per seed."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from lightning_hpo.cli.common import (
    default_configs,
    interrupted_status,
    preflight_argument,
    print_preflight,
    run_command,
    version_argument,
)
from lightning_hpo.training.files import check_writable


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Train the model a run config describes, once per seed."
    )
    p.add_argument(
        "--config",
        help="run config YAML (default: configs/run_template.yaml, else the packaged template)",
    )
    version_argument(p)
    p.add_argument("--device", help="override the config's device: auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument(
        "--resume", action="store_true", help="continue interrupted runs from their last checkpoint"
    )
    p.add_argument("--output", default="runs", help="root folder for runs (default: %(default)s)")
    p.add_argument(
        "--progress", action="store_true", help="show Lightning's per-batch progress bar"
    )
    preflight_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _train(args: argparse.Namespace) -> int:
    from lightning_hpo.config.run import build, load_run_config

    cfg = load_run_config(
        args.config, {"device": args.device, "epochs": args.epochs}, resolve_imports=False
    )
    check_writable(args.output, "--output")
    build(cfg, args.config)

    from lightning_hpo.console import quiet_lightning
    from lightning_hpo.training.runs import refuse_existing, train
    from lightning_hpo.tuning.signals import interrupt_on_signals

    interrupt_on_signals()
    quiet_lightning()
    from lightning_hpo.training.preflight import preflight_run

    if not (args.resume or args.preflight):
        refuse_existing(cfg, args.output)  # before the preflight's line: nothing on stdout
    done = print_preflight([preflight_run(cfg, args.config)], args.preflight)
    if done is not None:
        return done

    try:
        with _live(cfg, args) as (screen, board):
            echo = screen.echo if screen else functools.partial(print, flush=True)

            def report(r) -> None:
                took = f"{r.seconds:.1f} s" + (
                    f" for {r.together} seeds together" if r.together > 1 else ""
                )
                if board is not None:
                    board.ended_seed(r.seed, len(r.history), r.final)
                echo(
                    f"seed {r.seed}: final val_loss {r.final:.5g} (best {r.best:.5g}) after {len(r.history)} epochs, {took}"
                )

            result = train(
                cfg,
                args.output,
                resume=args.resume,
                progress=args.progress,
                on_seed=report,
                on_epoch=board.epoch if board is not None else None,
                source=args.config,
            )
    except KeyboardInterrupt:
        print("interrupted: continue with the same command plus --resume", file=sys.stderr)
        return interrupted_status()
    where = result.results[0].run_dir.parent
    print(
        f"final val_loss over {len(result.results)} seed(s): {result.mean:.5g} ± {result.std:.2g}"
    )
    print(f"runs and checkpoints: {where}")
    if not cfg.loggers:  # TensorBoard, the default; loggers: lists others
        print(f"TensorBoard: tensorboard --logdir {where.parent}")
    return 0


@contextlib.contextmanager
def _live(cfg, args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    """The live display of the seeds (``live.screen.Screen`` drawing ``live.seeds.SeedBoard``)
    where stdout is a terminal and Lightning's own bars (``--progress``) are off; else
    (None, None): plain lines."""
    from lightning_hpo.live.screen import wanted

    if args.progress or not wanted():
        yield None, None
        return
    from lightning_hpo.live.screen import Screen
    from lightning_hpo.live.seeds import SeedBoard
    from lightning_hpo.metrics import VAL_LOSS

    board = SeedBoard(cfg.seeds, cfg.epochs, VAL_LOSS)
    with Screen(board) as screen:
        yield screen, board


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = train_parser(prog).parse_args(argv)
    default_configs(args)
    return run_command(_train, args)
