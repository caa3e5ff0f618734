"""Command lines. Thin: parse arguments, call a package function, report errors on one line.

Heavy imports (torch, Lightning, Optuna) happen inside the commands, so ``--help``
and config errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_hpo import __version__
from lightning_hpo.errors import ConfigError

# Exit statuses (README, "Exit statuses").
EXIT_NO_TRIAL_COMPLETED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15


def interrupted_status() -> int:
    """128 + the number of the signal that interrupted this process, as shells report it."""
    from lightning_hpo.tuning.signals import last_signal

    return 128 + int(last_signal())


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
        return interrupted_status()
    except BrokenPipeError:  # `tune.py report | head`
        sys.stderr.close()
        return 0


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


def train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Train the model a run config describes, once per seed."
    )
    p.add_argument(
        "--config",
        help="run config YAML (default: configs/run_template.yaml, else the packaged template)",
    )
    _version_argument(p)
    p.add_argument("--device", help="override the config's device: auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument(
        "--resume", action="store_true", help="continue interrupted runs from their last checkpoint"
    )
    p.add_argument("--output", default="runs", help="root folder for runs (default: %(default)s)")
    p.add_argument(
        "--progress", action="store_true", help="show Lightning's per-batch progress bar"
    )
    _preflight_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _preflight_argument(p: argparse.ArgumentParser) -> None:
    """``--preflight``, as train.py and tune.py both take it."""
    p.add_argument(
        "--preflight",
        action="store_true",
        help="only check the config: build every component, train one batch, print what was checked",
    )


def _preflight(results, only: bool, space_source: str | None = None) -> int | None:
    """Print the preflight's table (``--preflight``, then stop with 0) or its one-line cost."""
    from lightning_hpo.training.preflight import format_preflight

    table = format_preflight(results, space_source)
    if only:
        print(table)
        return 0
    print(table.splitlines()[-1].replace("passed:", "preflight passed:"), flush=True)
    return None


def _train(args: argparse.Namespace) -> int:
    from lightning_hpo.config.run import check_components, load_run_config

    cfg = load_run_config(
        args.config, {"device": args.device, "epochs": args.epochs}, resolve_imports=False
    )
    check_writable(args.output, "--output")
    check_components(cfg, args.config)

    from lightning_hpo.console import quiet_lightning
    from lightning_hpo.training.runs import refuse_existing, train
    from lightning_hpo.tuning.signals import interrupt_on_signals

    interrupt_on_signals()
    quiet_lightning()
    from lightning_hpo.training.preflight import preflight_run

    if not (args.resume or args.preflight):
        refuse_existing(cfg, args.output)  # before the preflight's line: nothing on stdout
    done = _preflight([preflight_run(cfg, args.config)], args.preflight)
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
            progress_bar=args.progress,
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
    print(f"TensorBoard: tensorboard --logdir {where.parent}")
    return 0


def _version_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"lightning-hpo {__version__}")


def _default_configs(args: argparse.Namespace) -> None:
    """Config files not given on the command line: ``configs/...`` when the working
    directory has it, else the packaged template (``scaffold.default_config``)."""
    from lightning_hpo.config.scaffold import OPTIMIZE_TEMPLATE, RUN_TEMPLATE, default_config

    for name, template in (
        ("config", RUN_TEMPLATE),
        ("run_config", RUN_TEMPLATE),
        ("optimize_config", OPTIMIZE_TEMPLATE),
    ):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, default_config(template))


def train_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = train_parser(prog).parse_args(argv)
    _default_configs(args)
    return run_command(_train, args)


def _config_arguments(p: argparse.ArgumentParser) -> None:
    """The two config files, as tune.py and tune.py report both take them."""
    p.add_argument(
        "--run-config",
        "--run_config",
        help="run config YAML (default: configs/run_template.yaml, else the packaged template)",
    )
    p.add_argument(
        "--optimize-config",
        "--optimize_config",
        help="optimize config YAML (default: configs/optimize_template.yaml, else the packaged template)",
    )
    _version_argument(p)


def tune_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run (or continue) an Optuna study over a run config. `tune.py report` summarises a study.",
    )
    _config_arguments(p)
    p.add_argument(
        "--storage",
        help="Optuna storage URL: sqlite:///f.db, postgresql://..., journal:f.log, journal+redis://host:6379 (default: sqlite:///<project>_Opt.db)",
    )
    p.add_argument("--study-name", help="override the config's study_name")
    p.add_argument("--trials", type=int, help="override the study's total number of trials")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes sharing the study (default: 1)",
    )
    p.add_argument("--device", help="override the run config's device")
    p.add_argument("--epochs", type=int, help="override the run config's epochs")
    p.add_argument("--output", default="runs", help="root folder for runs (default: %(default)s)")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=30,
        help="seconds between RDB heartbeats; 0 turns them off (default: %(default)s)",
    )
    p.add_argument(
        "--progress", action="store_true", help="show Lightning's per-batch progress bars"
    )
    _preflight_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks and Optuna's own logging")
    p.add_argument(
        "--max-trials", type=int, help=argparse.SUPPRESS
    )  # a worker's share, set by --workers
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # torch threads per worker
    return p


def _load_tune_configs(args: argparse.Namespace):
    """Both configs, validated together before any storage is opened: first everything that
    needs no import (fast), then the import paths (which load torch)."""
    from lightning_hpo.config.optimize import check_optimize_components, load_optimize_config
    from lightning_hpo.config.run import check_components, load_run_config

    if args.workers < 1:
        raise ConfigError(
            "--workers", None, f"must be >= 1, got {args.workers}", "e.g. --workers 2"
        )
    run = load_run_config(
        args.run_config, {"device": args.device, "epochs": args.epochs}, resolve_imports=False
    )
    opt = load_optimize_config(args.optimize_config, run, trials=args.trials, resolve_imports=False)
    if args.study_name:
        opt.study_name = args.study_name
    if args.storage:
        from lightning_hpo.storage.connect import check_url

        check_url(args.storage)
    check_writable(args.output, "--output")
    check_components(run, args.run_config)
    check_optimize_components(opt, run, args.optimize_config)
    from lightning_hpo.training.runs import check_fusion

    check_fusion(run, args.run_config)
    return run, opt


def _settings(args: argparse.Namespace):
    from lightning_hpo.tuning.study import TuneSettings

    return TuneSettings(
        storage=args.storage,
        runs_root=args.output,
        progress_bar=args.progress,
        heartbeat=args.heartbeat or None,
        max_trials=args.max_trials,
    )


def _tune(args: argparse.Namespace) -> int:
    run, opt = _load_tune_configs(args)
    settings = _settings(args)

    from lightning_hpo.console import quiet_lightning
    from lightning_hpo.tuning.optimize import finish, quiet_optuna, tune
    from lightning_hpo.tuning.signals import interrupt_on_signals
    from lightning_hpo.tuning.study import (
        create_or_load_study,
        fail_dead_trials,
        no_trial_completed,
        remaining,
    )

    interrupt_on_signals()
    quiet_lightning()
    quiet_optuna(args.debug)
    if args.max_trials is None:  # not a --workers child: their parent checked already
        from lightning_hpo.training.preflight import preflight_study

        checks = preflight_study(run, opt, args.run_config, args.optimize_config)
        done = _preflight(checks, args.preflight, args.optimize_config)
        if done is not None:
            return done
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.workers > 1:
        # Create the study once, here, before the workers race to create its tables.
        study = create_or_load_study(run, opt, settings)
        fail_dead_trials(study)  # their retries fill slots the workers' shares must cover
        from lightning_hpo.tuning.workers import run_workers

        run_workers(
            args.argv,
            args.workers,
            remaining(study, opt.trials),
        )
    else:
        study = tune(run, opt, settings)
    if args.max_trials is not None:
        return 0  # a --workers child: the parent reports on the study
    why = no_trial_completed(study)
    if why:
        print(why, file=sys.stderr)
        return EXIT_NO_TRIAL_COMPLETED
    finish(run, opt, study, settings)
    return 0


# --------------------------------------------------------------------------- tune.py report


def report_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Summarise a study: best trials, importances, range edges, a pruning audit "
        "and plots. Read-only.",
    )
    _config_arguments(p)
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<project>_Opt.db)")
    p.add_argument("--study-name", help="override the config's study_name")
    p.add_argument(
        "--output",
        default="runs",
        help="root folder for runs; plots go to <output>/<project>_Opt/reports/<study_name> "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object with every number and plot path, nothing else",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=10,
        help="trials in the top table and in the pruner replay (default: %(default)s)",
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNGs")
    p.add_argument("--debug", action="store_true", help="show tracebacks and Optuna's warnings")
    return p


def report_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = report_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    _default_configs(args)
    return run_command(_report, args)


def _report(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import optuna

    from lightning_hpo.config.optimize import load_optimize_config
    from lightning_hpo.config.run import load_run_config
    from lightning_hpo.report import build_report, format_text, write_plots
    from lightning_hpo.storage.connect import default_url, open_study, redact

    run = load_run_config(args.run_config)
    opt = load_optimize_config(args.optimize_config, run)
    if args.study_name:
        opt.study_name = args.study_name
    if args.top_k < 1:
        raise ConfigError("--top-k", None, f"must be >= 1, got {args.top_k}", "e.g. --top-k 10")
    if not args.no_plots:
        check_writable(args.output, "--output")
    optuna.logging.set_verbosity(optuna.logging.WARNING if args.debug else optuna.logging.ERROR)
    url = args.storage or default_url(run.project)
    study = open_study(url, opt.study_name)
    report = dataclasses.replace(build_report(study, opt, top_k=args.top_k), storage=redact(url))
    if not args.no_plots:
        from lightning_hpo.tuning.study import report_folder

        plots = write_plots(study, opt, report, report_folder(run, opt, args.output))
        report = dataclasses.replace(report, plots=plots)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_text(report))
    return 0


def tune_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:], f"{prog or Path(sys.argv[0]).name} report")
    args = tune_parser(prog).parse_args(argv)
    _default_configs(args)
    args.argv = argv
    return run_command(_tune, args)


# --------------------------------------------------------------------------- lightning-hpo


def init_parser(prog: str | None = "lightning-hpo init") -> argparse.ArgumentParser:
    """``init [DIR]``: its one argument, the folder to write ``configs/`` into."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Write the run and optimize config templates to DIR/configs/, to edit. "
        "Never overwrites a file.",
    )
    p.add_argument("dir", nargs="?", default=".", help="project folder (default: %(default)s)")
    _version_argument(p)
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
    _version_argument(p)
    p.parse_args(argv)  # --help, --version, or a usage error: each exits here
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(tune_main())
