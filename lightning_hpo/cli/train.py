"""``train.py`` (``lightning-hpo train``): train the model a run config describes, once per seed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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

    def report(r) -> None:
        took = f"{r.seconds:.1f} s" + (
            f" for {r.together} seeds together" if r.together > 1 else ""
        )
        print(
            f"seed {r.seed}: final val_loss {r.final:.5g} (best {r.best:.5g}) after {len(r.history)} epochs, {took}",
            flush=True,
        )

    try:
        result = train(
            cfg,
            args.output,
            resume=args.resume,
            progress=args.progress,
            on_seed=report,
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


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = train_parser(prog).parse_args(argv)
    default_configs(args)
    return run_command(_train, args)
