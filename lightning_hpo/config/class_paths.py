"""The run config's ``callbacks`` and ``loggers``: lists of ``{class_path, init_args}`` entries
(``init_args`` may be left out), the way LightningCLI configs write them.

``check_entries`` checks their shape when the file loads (no import); ``check_classes``, at
build time, that each import path names a Lightning ``Callback`` or ``Logger`` and that its
``init_args`` fit the constructor (names, required ones, plain types; a callback is also
built once, a logger's package checked and, unless it reaches a store or a service, the
logger built once in a throwaway folder).
A logger's ``save_dir`` and its run names default to the seed's run folder
(``logger_defaults``), so every seed (and a fused run's mean) is its own run in each logger.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import tempfile
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_hpo.config.imports import accepted_kwargs, check_kwargs, resolve
from lightning_hpo.config.validation import fits_annotation
from lightning_hpo.errors import ConfigError
from lightning_hpo.storage.connect import redact

CALLBACKS, LOGGERS = "callbacks", "loggers"
CLASS_PATH, INIT_ARGS = "class_path", "init_args"
_BASES = {
    CALLBACKS: "lightning.pytorch.callbacks.Callback",
    LOGGERS: "lightning.pytorch.loggers.Logger",
}
_EXAMPLES = {
    CALLBACKS: "lightning.pytorch.callbacks.LearningRateMonitor",
    LOGGERS: "lightning.pytorch.loggers.CSVLogger",
}

# Callbacks the run sets itself (or a Trainer option it owns), and what to use instead.
OWNED_CALLBACKS = {
    "lightning.pytorch.callbacks.ModelCheckpoint": "each run checkpoints itself: use checkpoint_config",
    "lightning.pytorch.callbacks.EarlyStopping": "use early_stopping_config (fused seeds then stop one by one)",
    "lightning.pytorch.callbacks.ProgressBar": "pass --progress for Lightning's progress bar",
}

# The packages a logger needs beyond Lightning, and this package's extra that installs them.
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
# Lightning's loggers (those of its version that has them) a config check does not build:
# they may open a store or reach a service.
SERVICE_LOGGERS = ("MLFlowLogger", "WandbLogger", "CometLogger", "NeptuneLogger", "LitLogger")
MLFLOW_STORE, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"  # in the run's (group's) folder


def check_entries(name: str, value: Any, source: str) -> list[dict[str, Any]]:
    """The shape of ``callbacks`` or ``loggers``: a list of mappings, each with a
    ``class_path`` string and an optional ``init_args`` mapping. Returns them normalised."""
    example = f"[{{{CLASS_PATH}: {_EXAMPLES[name]}}}]"
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(
            source,
            name,
            f"expected a list of {{{CLASS_PATH}, {INIT_ARGS}}} mappings, got {value!r}",
            f"write {name}: {example}",
        )
    entries = []
    for index, item in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(
                source,
                where,
                f"expected a mapping with {CLASS_PATH} (and {INIT_ARGS}), got {item!r}",
                f"write {name}: {example}",
            )
        for key in item:
            if key not in (CLASS_PATH, INIT_ARGS):
                near = difflib.get_close_matches(str(key), [CLASS_PATH, INIT_ARGS], n=1)
                fix = f"did you mean '{near[0]}'?" if near else f"use {CLASS_PATH} and {INIT_ARGS}"
                raise ConfigError(source, f"{where}.{key}", "unknown key", fix)
        path = item.get(CLASS_PATH)
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(
                source,
                f"{where}.{CLASS_PATH}",
                f"expected an import path, got {path!r}",
                f"give the class's full dotted path, e.g. {_EXAMPLES[name]}",
            )
        init_args = item.get(INIT_ARGS) or {}
        if not isinstance(init_args, dict):
            raise ConfigError(
                source,
                f"{where}.{INIT_ARGS}",
                f"expected a mapping of the constructor's arguments, got {init_args!r}",
                f"write {INIT_ARGS}: {{name: value}}, or leave it out",
            )
        entries.append({CLASS_PATH: path, INIT_ARGS: dict(init_args)})
    return entries


def logger_defaults(
    cls: type, run_dir: Path, project: str, given: Mapping[str, Any] = {}
) -> dict[str, Any]:
    """Where logger ``cls`` writes one seed's run (``run_dir``, ``<output>/<project>/<group>/
    <seed>``) unless its ``init_args`` (``given``) say otherwise.

    TensorBoard and CSV write into the folder itself (``save_dir/name/version``). W&B writes
    under ``<run_dir>/wandb`` (project ``project``, run ``<group>/<seed>``). MLflow tracks in a
    SQLite store beside the seeds, ``<group>/mlflow.db`` (experiment ``project``, run
    ``<group>/<seed>``, artifacts in ``<group>/mlartifacts``): one store per run, as creating
    one costs seconds, and the file store is deprecated. Any other logger gets its
    ``save_dir`` (when it takes one) there.

    Only the defaults ``cls``'s constructor accepts are given: a subclass with a constructor
    of its own keeps its own values for the rest. A TensorBoard or CSV subclass that takes
    no ``version`` gets the seed's folder as its ``save_dir`` (its runs go under it).
    """
    accepted = accepted_kwargs(cls)  # None: it takes **kwargs
    defaults = _logger_defaults(cls, run_dir, project, given, accepted)
    return {k: v for k, v in defaults.items() if accepted is None or k in accepted}


def _logger_defaults(
    cls: type, run_dir: Path, project: str, given: Mapping[str, Any], accepted: set[str] | None
) -> dict[str, Any]:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    run = f"{run_dir.parent.name}/{run_dir.name}"
    if issubclass(cls, (TensorBoardLogger, CSVLogger)):
        folder = (
            {
                "save_dir": str(run_dir.parent.parent),
                "name": run_dir.parent.name,
                "version": run_dir.name,
            }
            if accepted is None or "version" in accepted
            else {"save_dir": str(run_dir)}
        )
        return folder | ({"default_hp_metric": False} if issubclass(cls, TensorBoardLogger) else {})
    if issubclass(cls, MLFlowLogger):
        names = {"experiment_name": project, "run_name": run}
        if "tracking_uri" in given or "save_dir" in given:
            return names
        store = {
            "tracking_uri": f"sqlite:///{run_dir.parent.resolve() / MLFLOW_STORE}",
            "artifact_location": str(run_dir.parent.resolve() / MLFLOW_ARTIFACTS),
        }
        return names | store
    if issubclass(cls, WandbLogger):
        return {"save_dir": str(run_dir), "project": project, "name": run}
    return {"save_dir": str(run_dir)} if "save_dir" in inspect.signature(cls).parameters else {}


def reaches_service(cls: type) -> bool:
    """Whether logger ``cls`` is one of Lightning's ``SERVICE_LOGGERS`` (or a subclass)."""
    import lightning.pytorch.loggers as loggers

    found = (getattr(loggers, name, None) for name in SERVICE_LOGGERS)
    return issubclass(cls, tuple(c for c in found if isinstance(c, type)))


def needed_package(cls: type) -> str | None:
    """The package logger ``cls`` needs beyond Lightning (``EXTRAS``), when it is not installed."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    for base, package in ((MLFlowLogger, "mlflow"), (WandbLogger, "wandb")):
        if issubclass(cls, base) and importlib.util.find_spec(package) is None:
            return package
    return None


def make(
    cls: type, init_args: Mapping[str, Any], defaults: Mapping[str, Any], source: str, where: str
) -> Any:
    """``cls(**(defaults | init_args))``; a constructor that refuses them is a ConfigError."""
    try:
        return cls(**(dict(defaults) | dict(init_args)))
    except ModuleNotFoundError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0]) or next(
            (e for k, e in EXTRAS.items() if k in str(exc)), None
        )
        fix = f"pip install 'lightning-hpo[{extra}]'" if extra else "install the missing package"
        raise ConfigError(
            source, f"{where}.{CLASS_PATH}", f"{cls.__qualname__} needs a package: {exc}", fix
        ) from None
    except Exception as exc:  # noqa: BLE001 - the constructor's own message says what is wrong
        first = redact((str(exc).strip().splitlines() or [exc.__class__.__name__])[0])
        ours = sorted(set(defaults) - set(init_args))
        if any(name in first for name in init_args) or not ours:
            raise ConfigError(
                source,
                f"{where}.{INIT_ARGS}",
                f"{cls.__qualname__} rejected {redacted(init_args)}: {first}",
                f"fix {where}.{INIT_ARGS}",
            ) from None
        # Not the user's init_args: the constructor, given what lightning-hpo passes it.
        raise ConfigError(
            source,
            f"{where}.{CLASS_PATH}",
            f"{cls.__qualname__} could not be built (init_args {redacted(init_args)}, and "
            f"lightning-hpo's {', '.join(ours)}): {first}",
            f"fix {cls.__qualname__}'s constructor or {where}.{INIT_ARGS}",
        ) from None


def _check_types(cls: type, init_args: Mapping[str, Any], source: str, where: str) -> None:
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate: left to the constructor
        return
    for key, value in init_args.items():
        if key in hints and fits_annotation(value, hints[key]) is False:
            raise ConfigError(
                source,
                f"{where}.{INIT_ARGS}.{key}",
                f"{cls.__qualname__} takes {hints[key]} for {key}, got {redacted({key: value})[key]!r}",
                f"fix {where}.{INIT_ARGS}.{key}",
            )


def check_classes(name: str, entries: list[dict[str, Any]], project: str, source: str) -> None:
    """Each entry names a Lightning ``Callback`` (``loggers``: ``Logger``) subclass, not one the
    run sets itself, whose constructor takes its ``init_args`` (with a logger's defaults)."""
    base = resolve(_BASES[name])
    for index, entry in enumerate(entries):
        where, path = f"{name}[{index}]", entry[CLASS_PATH]
        cls = resolve(path, source, f"{where}.{CLASS_PATH}")
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigError(
                source,
                f"{where}.{CLASS_PATH}",
                f"{path} is not a {_BASES[name]} subclass",
                f"name one, e.g. {_EXAMPLES[name]}",
            )
        for owned, why in OWNED_CALLBACKS.items() if name == CALLBACKS else ():
            if issubclass(cls, resolve(owned)):
                raise ConfigError(
                    source, f"{where}.{CLASS_PATH}", f"{path} is set by lightning-hpo", why
                )
        init_args = entry[INIT_ARGS]
        if name == CALLBACKS:  # built now (cheap, writes nothing), again for every Trainer
            check_kwargs(cls, init_args, source, f"{where}.{INIT_ARGS}")
            _check_types(cls, init_args, source, where)
            make(cls, init_args, {}, source, where)
            continue
        # Its names, types and package are checked; then it is built as a run would build it,
        # in a throwaway folder, unless it may open a store (MLflow's takes seconds) or a
        # service (``SERVICE_LOGGERS``).
        defaults = logger_defaults(cls, Path("group") / "0", project, init_args)
        check_kwargs(cls, init_args, source, f"{where}.{INIT_ARGS}", skip=tuple(defaults))
        _check_types(cls, init_args, source, where)
        package = needed_package(cls)
        if package is not None:
            raise ConfigError(
                source,
                f"{where}.{CLASS_PATH}",
                f"{path} needs {package}, which is not installed",
                f"pip install 'lightning-hpo[{EXTRAS[package]}]'",
            )
        if not reaches_service(cls):
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / project / "group" / "0"
                make(
                    cls, init_args, logger_defaults(cls, run_dir, project, init_args), source, where
                )


def redacted(init_args: Mapping[str, Any]) -> dict[str, Any]:
    """``init_args`` with any password in a URL (a tracking URI's) replaced by ``***``,
    at any depth of nested mappings and lists."""
    return {k: _redacted_value(v) for k, v in init_args.items()}


def _redacted_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value, bare=False)
    if isinstance(value, Mapping):
        return redacted(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted_value(v) for v in value)
    return value


def shareable(config: dict[str, Any]) -> dict[str, Any]:
    """A run config mapping as written to files and loggers: its callbacks' and loggers'
    ``init_args`` without URL passwords (``redacted``)."""
    return config | {
        name: [e | {INIT_ARGS: redacted(e.get(INIT_ARGS) or {})} for e in config[name]]
        for name in (CALLBACKS, LOGGERS)
        if name in config
    }


def logger_fusion_blocker(loggers: list[dict[str, Any]]) -> str | None:
    """Why these loggers cannot give fused seeds a run each, or None: Lightning's
    ``WandbLogger`` logs to the process's one W&B run (``wandb.run``), which every seed's
    logger in one Trainer would share."""
    from lightning.pytorch.loggers import WandbLogger

    for index, entry in enumerate(loggers):
        cls = resolve(entry[CLASS_PATH])
        if isinstance(cls, type) and issubclass(cls, WandbLogger):
            return (
                f"{LOGGERS}[{index}] {cls.__qualname__} logs to the process's one W&B run, so "
                "seeds trained together cannot each have their own"
            )
    return None
