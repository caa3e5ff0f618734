"""The Python API: ``train`` and ``tune``, what ``train.py`` and ``tune.py`` do, from a
notebook or a script.

Each config is a YAML file's path or a mapping. ``options`` are the command line's options
by their long names (``output``, ``storage``, ``study_name``, ``trials``, ...). The same
checks and the same preflight run as on the command line, and a bad value raises
``ConfigError`` with the same one-line message. Nothing process-wide is left behind: no
signal handler, no logging level, no frozen heap.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lightning_hpo.errors import ConfigError

Config = str | Path | Mapping[str, Any]

TRAIN_OPTIONS = {
    "output": "runs",
    "device": None,
    "epochs": None,
    "resume": False,
    "progress": False,
    "preflight": True,
}
TUNE_OPTIONS = {
    "storage": None,
    "study_name": None,
    "trials": None,
    "output": "runs",
    "device": None,
    "epochs": None,
    "heartbeat": 30,
    "progress": False,
    "preflight": True,
}


def _options(given: dict[str, Any], known: dict[str, Any], command: str) -> dict[str, Any]:
    """``known``'s defaults with ``given`` on top; an unknown name is a ConfigError."""
    for name in given:
        if name not in known:
            near = difflib.get_close_matches(name, list(known), n=1)
            fix = f"did you mean {near[0]!r}?" if near else f"options: {', '.join(known)}"
            raise ConfigError(f"lightning_hpo.{command}", name, "unknown option", fix)
    return known | given


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's banners and Optuna's per-trial logging off for the call only."""
    import optuna

    from lightning_hpo.console import banners_off

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with banners_off():
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def train(run_config: Config, **options: Any):
    """Train every seed of ``run_config``, as ``train.py`` does; return the per-seed results
    (``TrainResult``: ``.results``, ``.mean``, ``.std``).

    Options: ``output`` (``runs``), ``device``, ``epochs``, ``resume`` (False),
    ``progress`` (False), ``preflight`` (True: build everything and train one batch first).
    """
    from lightning_hpo.config.run import build, config_source, load_run_config
    from lightning_hpo.training.files import check_writable

    opts = _options(options, TRAIN_OPTIONS, "train")
    source = config_source(run_config, "<run config>")
    cfg = load_run_config(
        run_config, {"device": opts["device"], "epochs": opts["epochs"]}, resolve_imports=False
    )
    check_writable(opts["output"], "output")
    build(cfg, source)

    from lightning_hpo.training.preflight import preflight_run
    from lightning_hpo.training.runs import refuse_existing
    from lightning_hpo.training.runs import train as train_run

    with _quiet():
        if not opts["resume"]:
            refuse_existing(cfg, opts["output"])
        if opts["preflight"]:
            preflight_run(cfg, source)
        return train_run(
            cfg,
            opts["output"],
            resume=opts["resume"],
            progress=opts["progress"],
            source=source,
        )


def tune(run_config: Config, optimize_config: Config, **options: Any):
    """Run (or continue) the study ``optimize_config`` describes over ``run_config``, as
    ``tune.py`` does, printing a line per trial; return the ``optuna.Study``.

    Options: ``storage`` (``sqlite:///<project>_Opt.db``), ``study_name``, ``trials``,
    ``output`` (``runs``), ``device``, ``epochs``, ``heartbeat`` (30 s), ``progress``
    (False), ``preflight`` (True: every component and the search space's corners built
    and trained for one batch first). ``best.yaml`` is written as ``tune.py`` writes it.
    """
    from lightning_hpo.config.run import config_source
    from lightning_hpo.tuning.prepare import load_tune_configs

    opts = _options(options, TUNE_OPTIONS, "tune")
    run, opt = load_tune_configs(
        run_config,
        optimize_config,
        device=opts["device"],
        epochs=opts["epochs"],
        trials=opts["trials"],
        study_name=opts["study_name"],
        storage=opts["storage"],
        output=opts["output"],
    )
    from lightning_hpo.training.preflight import preflight_study
    from lightning_hpo.tuning.study import TuneOptions
    from lightning_hpo.tuning.tuner import finish
    from lightning_hpo.tuning.tuner import tune as run_study

    settings = TuneOptions(
        storage=opts["storage"],
        output=str(opts["output"]),
        progress=opts["progress"],
        heartbeat=opts["heartbeat"] or None,
    )
    with _quiet():
        if opts["preflight"]:
            preflight_study(
                run,
                opt,
                config_source(run_config, "<run config>"),
                config_source(optimize_config, "<optimize config>"),
            )
        study = run_study(run, opt, settings)
        finish(run, opt, study, settings)
    return study
