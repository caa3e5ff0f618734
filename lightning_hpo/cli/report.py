"""``tune.py report`` (``lightning-hpo report``): summarise a study, read-only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightning_hpo.cli.common import config_arguments, run_command
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.files import check_writable

if TYPE_CHECKING:
    from lightning_hpo.config.optimize import OptimizeConfig
    from lightning_hpo.config.run import RunConfig


def report_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Summarise a study: best trials, importances, range edges, a pruning audit "
        "and plots. Read-only.",
    )
    config_arguments(p)
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
    return run_command(_report, args)


def _configs(args: argparse.Namespace) -> tuple[RunConfig | None, OptimizeConfig | None]:
    """The configs the report needs, loaded without importing or checking what they name
    (a study trained on a GPU is reported from a login node): those given, and the
    defaults (``configs/`` or the packaged templates) only for a missing storage URL (the
    run config's project) or study name (the optimize config's). None: not needed."""
    from lightning_hpo.config.optimize import load_optimize_config
    from lightning_hpo.config.run import load_run_config
    from lightning_hpo.config.scaffold import OPTIMIZE_TEMPLATE, RUN_TEMPLATE, default_config

    need_opt = args.optimize_config is not None or args.study_name is None
    if need_opt or args.run_config is not None or args.storage is None:
        run = load_run_config(
            args.run_config or default_config(RUN_TEMPLATE), resolve_imports=False
        )
    else:
        run = None
    if not need_opt:
        return run, None
    opt = load_optimize_config(
        args.optimize_config or default_config(OPTIMIZE_TEMPLATE),
        run,
        study_name=args.study_name,
        resolve_imports=False,
    )
    return run, opt


def _report(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import optuna

    from lightning_hpo.config.run import load_run_config
    from lightning_hpo.config.scaffold import RUN_TEMPLATE, default_config
    from lightning_hpo.report import build_report, format_text, write_plots
    from lightning_hpo.report.stored import stored_project_folder
    from lightning_hpo.storage.connect import default_url, open_study, redact
    from lightning_hpo.tuning.study import check_compatible, report_folder, study_project

    if args.top_k < 1:
        raise ConfigError("--top-k", None, f"must be >= 1, got {args.top_k}", "e.g. --top-k 10")
    run, opt = _configs(args)
    if not args.no_plots:
        check_writable(args.output, "--output")
    optuna.logging.set_verbosity(optuna.logging.WARNING if args.debug else optuna.logging.ERROR)
    url = args.storage or default_url(run.project)
    study_name = args.study_name or opt.study_name
    study = open_study(url, study_name)
    # A config given for the study must be the study's own; the defaults are not asked
    # for it, and the report describes the study as stored.
    given = opt if args.optimize_config is not None else None
    if given is not None:
        try:
            check_compatible(
                study,
                given,
                fix="give the optimize config the study ran with (it must keep {}), or leave "
                "--optimize-config out to report the study as stored",
            )
        except ConfigError as exc:
            raise exc.with_source(args.optimize_config) from None
    report = dataclasses.replace(build_report(study, given, top_k=args.top_k), storage=redact(url))
    if not args.no_plots:
        # The study's own project folder, where its trials ran, unless a run config names it.
        project = stored_project_folder(study.get_trials(deepcopy=False))
        if args.run_config or not project:
            run = run or load_run_config(default_config(RUN_TEMPLATE), resolve_imports=False)
            project = study_project(run)
        folder = report_folder(project, study_name, args.output)
        report = dataclasses.replace(report, plots=write_plots(study, report, folder))
    print(json.dumps(report.to_json(), indent=2) if args.json else format_text(report))
    return 0
