"""What every command line shares: exit statuses, one-line errors, the config and version arguments, the preflight's output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lightning_hpo import __version__
from lightning_hpo.errors import ConfigError, RunFailed

# Exit statuses (README, "Exit statuses").
EXIT_NO_TRIAL_COMPLETED = 1


EXIT_BAD_INPUT = 2


EXIT_RUN_FAILED = 1  # train.py: a run recorded nothing (errors.RunFailed)


EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2


EXIT_TERMINATED = 143  # SIGTERM: 128 + 15


def interrupted_status() -> int:
    """128 + the number of the signal that interrupted this process, as shells report it."""
    from lightning_hpo.tuning.signals import last_signal

    return 128 + int(last_signal())


def run_command(main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run ``main(args)``; a ConfigError becomes one line on stderr and exit status 2, a
    RunFailed one line and exit status 1."""
    try:
        return main(args) or 0
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return interrupted_status()
    except BrokenPipeError:  # `tune.py report | head`
        sys.stderr.close()
        return 0


def preflight_argument(p: argparse.ArgumentParser) -> None:
    """``--preflight``, as train.py and tune.py both take it."""
    p.add_argument(
        "--preflight",
        action="store_true",
        help="only check the config: build every component, train one batch, print what was checked",
    )


def print_preflight(results, only: bool, space_source: str | None = None) -> int | None:
    """Print the preflight's table (``--preflight``, then stop with 0) or its one-line cost."""
    from lightning_hpo.training.preflight import format_preflight

    table = format_preflight(results, space_source)
    if only:
        print(table)
        return 0
    print(table.splitlines()[-1].replace("passed:", "preflight passed:"), flush=True)
    return None


def version_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"lightning-hpo {__version__}")


def default_configs(args: argparse.Namespace) -> None:
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


def config_arguments(p: argparse.ArgumentParser) -> None:
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
    version_argument(p)
