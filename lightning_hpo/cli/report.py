"""``tune.py report`` (``lightning-hpo report``): summarise a study, read-only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning_hpo.cli.common import config_arguments, default_configs, run_command
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.files import check_writable


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
    default_configs(args)
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
    opt = load_optimize_config(args.optimize_config, run, study_name=args.study_name)
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
