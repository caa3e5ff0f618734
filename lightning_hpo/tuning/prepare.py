"""What a study is checked for before it starts, shared by ``tune.py`` and
``lightning_hpo.tune``: both configs loaded and built (structure first, which needs no
import, then the import paths), the output folder, the storage URL, and what a study
cannot run. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_hpo.config.optimize import OptimizeConfig
from lightning_hpo.config.run import RunConfig, config_source
from lightning_hpo.errors import ConfigError
from lightning_hpo.training.files import check_writable

Config = str | Path | Mapping[str, Any]


def load_tune_configs(
    run_config: Config,
    optimize_config: Config,
    *,
    device: str | None = None,
    epochs: int | None = None,
    trials: int | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    output: str | Path = "runs",
) -> tuple[RunConfig, OptimizeConfig]:
    """Both configs (files or mappings), with the command line's overrides, checked and
    built together before any storage is opened.

    Raises:
        ConfigError: the first problem, on one line.
    """
    from lightning_hpo.config.lightning_args import check_tunable
    from lightning_hpo.config.optimize import check_optimize_components, load_optimize_config
    from lightning_hpo.config.run import build, load_run_config
    from lightning_hpo.storage.connect import check_url, default_url

    run_source = config_source(run_config, "<run config>")
    opt_source = config_source(optimize_config, "<optimize config>")
    run = load_run_config(run_config, {"device": device, "epochs": epochs}, resolve_imports=False)
    opt = load_optimize_config(
        optimize_config, run, trials=trials, resolve_imports=False, study_name=study_name
    )
    if storage:
        check_url(storage)
    check_tunable(run.trainer_config, run_source)
    check_writable(output, "--output")
    build(run, run_source)
    check_optimize_components(opt, run, opt_source)
    check_processes(run, storage or default_url(run.project), run_source)
    from lightning_hpo.training.runs import check_fusion

    check_fusion(run, run_source)
    return run, opt


def check_processes(run, url: str, source: str) -> None:
    """Refuse what a study cannot run: ranks started by an outside launcher, each of which
    would run a study of its own, and DDP on a journal storage, which the spawned ranks
    cannot report to."""
    from lightning_hpo.config.lightning_args import outside_launcher, rank_count
    from lightning_hpo.storage.connect import is_journal, redact

    launcher = outside_launcher()
    if launcher is not None:
        raise ConfigError(
            "tune.py",
            None,
            f"started as one of several ranks by {launcher}: each rank would run a study of its own",
            "start tune.py once per machine (--workers N for several trials at once); "
            "it starts a trial's ranks itself (devices, strategy: ddp_spawn)",
        )
    ranks = rank_count(run.device, run.devices)
    if ranks > 1 and is_journal(url):
        raise ConfigError(
            source,
            "devices",
            f"{ranks} processes per trial need an RDB storage for the pruning callback, "
            f"but the storage is a journal ({redact(url)})",
            "use sqlite:///file.db, postgresql://... or mysql://..., or devices: 1",
        )
