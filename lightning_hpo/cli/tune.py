"""``tune.py`` (``lightning-hpo tune``): run or continue an Optuna study over a run config."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lightning_hpo.cli.common import (
    EXIT_NO_TRIAL_COMPLETED,
    config_arguments,
    default_configs,
    preflight_argument,
    print_preflight,
    run_command,
)
from lightning_hpo.cli.report import report_main
from lightning_hpo.errors import ConfigError


def tune_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run (or continue) an Optuna study over a run config. `tune.py report` summarises a study.",
    )
    config_arguments(p)
    p.add_argument(
        "--storage",
        help="Optuna storage URL: sqlite:///f.db, postgresql://..., journal:f.log, journal+redis://host:6379 (default: sqlite:///<project>_Opt.db)",
    )
    p.add_argument("--study-name", help="override the config's study_name")
    p.add_argument("--trials", type=int, help="override the study's total number of trials")
    p.add_argument(
        "--workers",
        type=int,
        help="local worker processes sharing the study, each pulling trials until it is full "
        "(default: one per GPU set where GPUs are visible, else 1)",
    )
    p.add_argument(
        "--trials-per-gpu",
        type=int,
        default=1,
        help="workers packed on each GPU (each set of `devices` GPUs), for small models "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="where the workers run: local processes, or a SLURM job array (needs a storage "
        "every node reaches; the `slurm` extra) (default: %(default)s)",
    )
    p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a SLURM option for --launcher slurm, repeatable: --slurm partition=gpu "
        "--slurm time=04:00:00 --slurm gpus_per_task=1",
    )
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="with --launcher slurm: return after submitting, printing how to watch and cancel",
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
    preflight_argument(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks and Optuna's own logging")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a --workers child
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # torch threads per worker
    return p


def _options(args: argparse.Namespace):
    from lightning_hpo.tuning.study import TuneOptions

    return TuneOptions(
        storage=args.storage,
        output=args.output,
        progress=args.progress,
        heartbeat=args.heartbeat or None,
    )


def _worker_plan(args: argparse.Namespace, run) -> tuple[int, list[list[str]] | None]:
    """How many workers, and each one's GPUs (None without GPUs: the CPU threads are split)."""
    from lightning_hpo.config.lightning_args import rank_count
    from lightning_hpo.tuning.workers import device_sets, visible_gpus

    gpus = visible_gpus() if run.device in ("auto", "cuda", "gpu") else []
    if not gpus:
        return args.workers or 1, None
    sets = device_sets(gpus, rank_count(run.device, run.devices), args.trials_per_gpu, args.workers)
    return len(sets), sets


def _tune(args: argparse.Namespace) -> int:
    from lightning_hpo.tuning.prepare import load_tune_configs

    for flag, value in (("--workers", args.workers), ("--trials-per-gpu", args.trials_per_gpu)):
        if value is not None and value < 1:
            raise ConfigError(flag, None, f"must be >= 1, got {value}", f"e.g. {flag} 2")
    if args.launcher == "slurm":
        _check_slurm(args)
    run, opt = load_tune_configs(
        args.run_config,
        args.optimize_config,
        device=args.device,
        epochs=args.epochs,
        trials=args.trials,
        study_name=args.study_name,
        storage=args.storage,
        output=args.output,
    )
    options = _options(args)

    from lightning_hpo.console import quiet_lightning
    from lightning_hpo.tuning.signals import interrupt_on_signals
    from lightning_hpo.tuning.tuner import quiet_optuna

    interrupt_on_signals()
    quiet_lightning()
    quiet_optuna(args.debug)
    if not args.worker:  # a --workers child's parent checked already
        from lightning_hpo.training.preflight import preflight_study

        checks = preflight_study(run, opt, args.run_config, args.optimize_config)
        done = print_preflight(checks, args.preflight, args.optimize_config)
        if done is not None:
            return done
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with _live(args, opt) as screen:
        study, code = _run_trials(args, run, opt, options, screen)
    if code is not None:
        return code
    if args.worker:
        return 0  # the parent reports on the study
    return _finish(run, opt, study, options)


def _run_trials(args, run, opt, options, screen) -> tuple[Any, int | None]:
    """Run the study's missing trials: in this process, in ``--workers`` children or in
    SLURM jobs, their lines through ``screen`` (the live display) where there is one.

    Returns:
        The study, and an exit status when the command ends without its report.
    """
    from lightning_hpo.console import note_once
    from lightning_hpo.tuning.liveness import fail_dead_trials
    from lightning_hpo.tuning.study import create_or_load_study, remaining
    from lightning_hpo.tuning.tuner import tune

    echo = screen.echo if screen else print
    watch = screen.render.watch if screen else (lambda study: None)
    local = args.launcher == "local"
    workers, gpu_sets = (1, None) if args.worker or not local else _worker_plan(args, run)
    if local and workers == 1:
        return tune(run, opt, options, echo=echo, on_study=watch), None
    # Create the study once, here, before the workers race to create its tables.
    study = create_or_load_study(run, opt, options)
    fail_dead_trials(study, heartbeat=options.heartbeat)  # their retries fill slots
    watch(study)
    if not local:
        if not _slurm_workers(args, run, opt, options, study, echo):
            return study, 0  # submitted, not waited for
    else:
        from lightning_hpo.tuning.workers import run_workers

        codes = run_workers(
            args.argv,
            workers,
            remaining(study, opt.trials),
            gpu_sets,
            relay=screen.relay if screen else None,
        )
        errors = [c for c in codes if c > 0]
        if errors:
            return study, errors[0]  # a worker's own error (its line is above)
        for code in sorted({-c for c in codes if c < 0}):
            note_once(
                f"a worker was killed ({signal.Signals(code).name}): the others took over its trials"
            )
    _after_workers(study, opt, options)
    return study, None


@contextlib.contextmanager
def _live(args: argparse.Namespace, opt) -> Iterator[Any]:
    """The live display of the study (``live.screen.Screen`` drawing ``live.study.StudyView``)
    while the trials run, where stdout is a terminal; None elsewhere, and in a ``--workers``
    child, with ``--progress`` (Lightning's bars) or ``--no-wait``: plain lines there."""
    from lightning_hpo.live.screen import wanted

    if args.worker or args.progress or not args.wait or not wanted():
        yield None
        return
    from lightning_hpo.live.screen import Screen
    from lightning_hpo.live.study import StudyView

    with Screen(StudyView(opt)) as screen:
        yield screen


def _after_workers(study, opt, options) -> None:
    """Once the workers are gone: fail what dead ones left running, say what is missing."""
    from lightning_hpo.console import note_once
    from lightning_hpo.tuning.liveness import fail_dead_trials
    from lightning_hpo.tuning.study import remaining

    fail_dead_trials(study, heartbeat=options.heartbeat)
    left = remaining(study, opt.trials)
    if left:
        note_once(f"the study lacks {left} trial(s): run the same command again to finish it")


def _finish(run, opt, study, options) -> int:
    from lightning_hpo.tuning.study import no_trial_completed
    from lightning_hpo.tuning.tuner import finish

    why = no_trial_completed(study)
    if why:
        print(why, file=sys.stderr)
        return EXIT_NO_TRIAL_COMPLETED
    finish(run, opt, study, options)
    return 0


def _check_slurm(args: argparse.Namespace) -> None:
    """What --launcher slurm needs, before anything is loaded or trained."""
    from lightning_hpo.tuning.slurm import check_cluster, check_storage

    if args.trials_per_gpu != 1:
        raise ConfigError(
            "--trials-per-gpu",
            str(args.trials_per_gpu),
            "packs local workers on a GPU; SLURM hands out the GPUs of its jobs",
            "drop it, and ask SLURM for each worker's GPUs: --slurm gpus_per_task=1",
        )
    check_storage(args.storage)
    check_cluster()


def _slurm_workers(args, run, opt, options, study, echo=print) -> bool:
    """Submit the workers a SLURM study still needs; True when this waited for them."""
    from lightning_hpo.tuning.slurm import launch, worker_failures
    from lightning_hpo.tuning.study import remaining, study_folder
    from lightning_hpo.tuning.tuner import Progress

    todo = remaining(study, opt.trials)
    if not todo:
        return True
    folder = study_folder(run, opt, study, options)
    progress = Progress(opt, echo)
    jobs, waited = launch(
        tune_main,
        args.argv,
        min(args.workers or 1, todo),
        args.slurm,
        study,
        folder,
        args.storage,
        args.wait,
        echo,
        on_finished=lambda trial: progress(study, trial),
    )
    for line in worker_failures(jobs) if waited else ():
        print(line, file=sys.stderr)
    return waited


def tune_main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:], f"{prog or Path(sys.argv[0]).name} report")
    args = tune_parser(prog).parse_args(argv)
    default_configs(args)
    args.argv = argv
    return run_command(_tune, args)
