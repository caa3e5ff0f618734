"""The optimize config: the study's settings and its search space.

Everything here is checked before any storage is opened or anything trained.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_hpo.config import RunConfig, run_config_from_dict, unknown_key
from lightning_hpo.errors import ConfigError
from lightning_hpo.imports import accepted_kwargs, check_kwargs, resolve
from lightning_hpo.metrics import LOGGED_METRICS
from lightning_hpo.validation import is_int, is_number
from lightning_hpo.yamlio import load_yaml

DIRECTIONS = ("minimize", "maximize")
TYPES = ("int", "float", "categorical")
SPEC_KEYS = ("type", "min", "max", "step", "log", "choices")
# Run-config fields that are plain numbers and may be searched directly.
SCALAR_FIELDS = ("epochs", "batch_size")


@dataclass
class Param:
    """One searched hyperparameter. ``group`` is None for a top-level field such as batch_size."""

    group: str | None
    key: str
    type: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @property
    def where(self) -> str:
        """The key's path in the optimize config, for error messages."""
        return f"search_space.{self.group}.{self.key}" if self.group else f"search_space.{self.key}"

    @property
    def name(self) -> str:
        """The Optuna parameter name: ``<group>_<param>`` as in the reference design."""
        return f"{self.group}_{self.key}" if self.group else self.key

    def apply(self, data: dict[str, Any], value: Any) -> None:
        """Set this parameter to ``value`` in a run-config mapping."""
        if self.group:
            data[self.group][self.key] = value
        else:
            data[self.key] = value

    def distribution(self):
        import optuna.distributions as d

        if self.type == "categorical":
            return d.CategoricalDistribution(self.choices)
        if self.type == "int":
            return d.IntDistribution(int(self.min), int(self.max), log=self.log, step=int(self.step or 1))
        return d.FloatDistribution(self.min, self.max, log=self.log, step=self.step)

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.min), int(self.max), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.min, self.max, step=self.step, log=self.log)

    def grid(self) -> list[Any]:
        """Every value, for GridSampler."""
        if self.type == "categorical":
            return list(self.choices)
        step = self.step or 1
        count = int(round((self.max - self.min) / step)) + 1
        values = [self.min + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else values


@dataclass
class OptimizeConfig:
    """How to search. Field comments mirror configs/optimize_template.yaml."""

    study_name: str = "Optimize_MLP_Example"
    trials: int = 20  # the study's total, across restarts and workers
    seed: int | None = 42  # seeds the sampler
    metric: str = "val_loss"  # what the LightningModule logs and the study optimizes
    direction: str = "minimize"
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "optuna.samplers.TPESampler", "kwargs": {}})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "lightning_hpo.PFLPruner", "kwargs": {}})
    search_space: dict[str, Any] = field(default_factory=dict)
    params: list[Param] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}

    def suggest(self, trial, base: RunConfig) -> RunConfig:
        """The run config for ``trial``: the base config with every suggested value merged in."""
        data = base.to_dict()
        for p in self.params:
            p.apply(data, p.suggest(trial))
        return run_config_from_dict(data, f"trial {trial.number}")

    def merge(self, base: RunConfig, params: dict[str, Any]) -> RunConfig:
        """``base`` with stored trial ``params`` (by Optuna name) merged in."""
        data = base.to_dict()
        for p in self.params:
            if p.name in params:
                p.apply(data, params[p.name])
        return run_config_from_dict(data, "best trial")

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def make_sampler(self, seed_offset: int = 0):
        """The sampler the config names, seeded with ``seed + seed_offset``; GridSampler gets its grid here."""
        cls = resolve(self.sampler["name"], "<optimize config>", "sampler.name")
        kwargs = dict(self.sampler.get("kwargs") or {})
        accepted = accepted_kwargs(cls)
        if cls.__name__ == "GridSampler" and "search_space" not in kwargs:
            kwargs["search_space"] = {p.name: p.grid() for p in self.params}
        if self.seed is not None and "seed" not in kwargs and (accepted is None or "seed" in accepted):
            kwargs["seed"] = self.seed + seed_offset
        return cls(**kwargs)

    def seed_per_trial(self) -> bool:
        """Whether the sampler may be recreated for every trial with ``seed + trial.number``.

        Only for a plain RNG seed we set ourselves: GridSampler and QMCSampler derive their
        whole sequence from the seed, and a seed the user put in the kwargs is kept as given.
        """
        if self.seed is None or "seed" in (self.sampler.get("kwargs") or {}):
            return False
        cls = resolve(self.sampler["name"], "<optimize config>", "sampler.name")
        accepted = accepted_kwargs(cls)
        return cls.__name__ not in ("GridSampler", "QMCSampler") and (accepted is None or "seed" in accepted)

    def make_pruner(self):
        cls = resolve(self.pruner["name"], "<optimize config>", "pruner.name")
        return cls(**dict(self.pruner.get("kwargs") or {}))


def _number(value: Any, source: str, key: str) -> float:
    if not is_number(value):
        raise ConfigError(source, key, f"expected a number, got {value!r}", "write it as a number, e.g. 1.0e-3")
    if not math.isfinite(value):
        raise ConfigError(source, key, f"must be finite, got {value}", "use a finite bound")
    return value


def parse_param(group: str | None, key: str, spec: Any, source: str) -> Param:
    """Check one parameter's spec; every rule names the key it broke."""
    where = f"search_space.{group}.{key}" if group else f"search_space.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(source, where, f"expected a mapping like {{type: float, min: 0.1, max: 1.0}}, got {spec!r}", "describe the parameter with type/min/max or type/choices")
    for k in spec:
        if k not in SPEC_KEYS:
            raise unknown_key(source, str(k), list(SPEC_KEYS), prefix=f"{where}.")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(source, f"{where}.type", f"unknown type {kind!r}", f"use one of: {', '.join(TYPES)}")
    if kind == "categorical":
        choices = spec.get("choices")
        extra = [k for k in ("min", "max", "step", "log") if k in spec]
        if extra:
            raise ConfigError(source, f"{where}.{extra[0]}", "does not apply to a categorical parameter", "give only choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(source, f"{where}.choices", f"expected a non-empty list, got {choices!r}", "list at least one choice, e.g. [32, 64]")
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise ConfigError(source, f"{where}.choices", f"choices must be numbers, strings, booleans or null, got {bad[0]!r}", "list plain values")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(source, f"{where}.choices", f"duplicate choices in {choices}", "list each choice once")
        return Param(group, key, kind, choices=list(choices))
    if "choices" in spec:
        raise ConfigError(source, f"{where}.choices", f"does not apply to a {kind} parameter", "use type: categorical, or give min/max")
    for bound in ("min", "max"):
        if bound not in spec:
            raise ConfigError(source, f"{where}.{bound}", "is missing", f"give both min and max for a {kind} parameter")
    low, high = _number(spec["min"], source, f"{where}.min"), _number(spec["max"], source, f"{where}.max")
    step = spec.get("step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(source, f"{where}.log", f"expected true or false, got {log!r}", "write log: true or log: false")
    if kind == "int":
        for k, v in (("min", low), ("max", high), ("step", step)):
            if v is not None and not isinstance(v, int):
                raise ConfigError(source, f"{where}.{k}", f"expected an integer for an int parameter, got {v!r}", "use whole numbers, or type: float")
    if low > high:
        raise ConfigError(source, f"{where}.min", f"min ({low}) is greater than max ({high})", "swap them")
    if log and low <= 0:
        raise ConfigError(source, f"{where}.min", f"a log-scaled range needs min > 0, got {low}", "raise min above 0 or set log: false")
    if step is not None:
        step = _number(step, source, f"{where}.step")
        if log:
            raise ConfigError(source, f"{where}.step", "cannot be combined with log: true", "drop step or set log: false")
        if step <= 0:
            raise ConfigError(source, f"{where}.step", f"must be > 0, got {step}", "use a positive step")
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            raise ConfigError(source, f"{where}.step", f"{step} does not divide the range {low}..{high}", f"choose a step that divides {high - low}, or move max")
    return Param(group, key, kind, low, high, step, log)


def optimize_config_from_dict(data: dict[str, Any], run: RunConfig, source: str, resolve_imports: bool = True) -> OptimizeConfig:
    """Validate an optimize mapping against the run config it will tune.

    Args:
        resolve_imports: also import and build the sampler and pruner and check each
            searched keyword against its target (see ``check_optimize_components``).
            The rest needs no import, so structural errors answer at once.
    """
    names = [f.name for f in dataclasses.fields(OptimizeConfig) if f.name != "params"]
    for key in data:
        if key not in names:
            raise unknown_key(source, str(key), names)
    cfg = OptimizeConfig(**data)
    if not isinstance(cfg.study_name, str) or not cfg.study_name.strip():
        raise ConfigError(source, "study_name", f"expected a non-empty string, got {cfg.study_name!r}", "name the study")
    if not is_int(cfg.trials) or cfg.trials <= 0:
        raise ConfigError(source, "trials", f"expected a positive integer, got {cfg.trials!r}", "set trials to the study's total, e.g. 20")
    if cfg.seed is not None and not is_int(cfg.seed):
        raise ConfigError(source, "seed", f"expected an integer or null, got {cfg.seed!r}", "e.g. seed: 42")
    if cfg.direction not in DIRECTIONS:
        raise ConfigError(source, "direction", f"expected minimize or maximize, got {cfg.direction!r}", "set direction: minimize or direction: maximize")
    if cfg.metric not in LOGGED_METRICS:
        raise ConfigError(source, "metric", f"{cfg.metric!r} is never logged by the LightningModule", f"use one of: {', '.join(LOGGED_METRICS)}")
    for part in ("sampler", "pruner"):
        spec = getattr(cfg, part)
        if isinstance(spec, str):
            spec = {"name": spec}
        if spec is None and part == "pruner":
            spec = {"name": "optuna.pruners.NopPruner"}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(source, part, f"expected {{name: <import path>, kwargs: {{...}}}}, got {spec!r}", f"e.g. {part}: {{name: optuna.{part}s.{'TPESampler' if part == 'sampler' else 'MedianPruner'}}}")
        for k in spec:
            if k not in ("name", "kwargs"):
                raise unknown_key(source, str(k), ["name", "kwargs"], prefix=f"{part}.")
        kwargs = spec.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(source, f"{part}.kwargs", f"expected a mapping, got {kwargs!r}", "write keyword arguments as a mapping")
        setattr(cfg, part, {"name": spec["name"], "kwargs": kwargs})
    cfg.params = _parse_space(cfg.search_space, run, source)
    for p in cfg.params:
        if p.group is None and p.type == "float":
            raise ConfigError(source, p.where, f"{p.key} is an integer, but the search type is float", "use type: int (with step if you like) or categorical")
    # A config the search could produce must itself be valid: try the range ends.
    for p in cfg.params:
        for value in ([p.min, p.max] if p.type != "categorical" else p.choices):
            data = run.to_dict()
            p.apply(data, value)
            try:
                run_config_from_dict(data, source)
            except ConfigError as exc:
                raise ConfigError(source, p.where, f"value {value!r} is invalid for the run config ({exc.problem})", "narrow the range") from None
    if resolve_imports:
        check_optimize_components(cfg, run, source)
    return cfg


def check_optimize_components(cfg: OptimizeConfig, run: RunConfig, source: str) -> None:
    """Import and build the sampler and pruner; check searched keywords against their targets."""
    for part in ("sampler", "pruner"):
        spec = getattr(cfg, part)
        obj = resolve(spec["name"], source, f"{part}.name")
        check_kwargs(obj, spec["kwargs"], source, f"{part}.kwargs", skip=("search_space",) if part == "sampler" else ())
    for p in cfg.params:
        target = _kwargs_target(run, p.group) if p.group else None
        if target is not None:
            check_kwargs(target, {p.key: None}, source, f"search_space.{p.group}", require=False)
    for part, make in (("sampler", cfg.make_sampler), ("pruner", cfg.make_pruner)):
        try:
            make()
        except Exception as exc:  # noqa: BLE001 - the constructor's own message says what is wrong
            named = [k for k in cfg.__dict__[part]["kwargs"] if k in str(exc)]
            key = f"{part}.kwargs" + (f".{named[0]}" if named else "")
            raise ConfigError(source, key, f"{cfg.__dict__[part]['name']} rejected its arguments: {exc}", f"fix {key}") from None
    if resolve(cfg.sampler["name"]).__name__ == "GridSampler":
        for p in cfg.params:
            if p.type == "float" and p.step is None and "search_space" not in cfg.sampler["kwargs"]:
                raise ConfigError(source, p.where, "GridSampler needs a finite grid, but this float has no step", "add a step, or use type: categorical")


def _parse_space(space: Any, run: RunConfig, source: str) -> list[Param]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(source, "search_space", f"expected a non-empty mapping of groups, got {space!r}", "search at least one parameter, see configs/optimize_template.yaml")
    run_fields = run.to_dict()
    groups = [k for k, v in run_fields.items() if isinstance(v, dict)] + list(SCALAR_FIELDS)
    params: list[Param] = []
    for group, entries in space.items():
        if group in SCALAR_FIELDS:
            params.append(parse_param(None, group, entries, source))
            continue
        if group not in run_fields or not isinstance(run_fields[group], dict):
            raise unknown_key(source, str(group), groups, prefix="search_space.")
        if not isinstance(entries, dict) or not entries:
            raise ConfigError(source, f"search_space.{group}", f"expected a mapping of parameters, got {entries!r}", "list parameters under the group")
        for key, spec in entries.items():
            if group in ("early_stopping_config", "checkpoint_config") and key not in run_fields[group]:
                raise unknown_key(source, str(key), list(run_fields[group]), prefix=f"search_space.{group}.")
            params.append(parse_param(group, str(key), spec, source))
    return params


def _kwargs_target(run: RunConfig, group: str):
    """The callable whose keyword arguments a ``<name>_config`` group holds, if any."""
    name = group.removesuffix("_config")
    path = getattr(run, name, None) if name in ("net", "optimizer", "scheduler", "criterion", "data") else None
    return resolve(path) if path else None


def load_optimize_config(path: str | Path, run: RunConfig, trials: int | None = None, resolve_imports: bool = True) -> OptimizeConfig:
    """Load and validate an optimize config; ``trials`` overrides the file's count (--trials)."""
    data = load_yaml(path)
    if trials is not None:
        data["trials"] = trials
    return optimize_config_from_dict(data, run, str(path), resolve_imports)
