"""The optimize config: the study's settings (name, trials, metric, sampler, pruner) and its
search space (``search_space``).

Everything here is checked before any storage is opened or anything trained.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_hpo.config.imports import accepted_kwargs, check_kwargs, resolve
from lightning_hpo.config.module_contract import PART_KEYS, check_module_config
from lightning_hpo.config.run import (
    SEED_RANGE,
    RunConfig,
    config_source,
    in_seed_range,
    run_config_from_dict,
    unknown_key,
)
from lightning_hpo.config.search_space import Param, kwargs_target, parse_space, unused_part
from lightning_hpo.config.validation import is_int
from lightning_hpo.config.yamlio import load_yaml
from lightning_hpo.errors import ConfigError
from lightning_hpo.metrics import metric_name_problem

DIRECTIONS = ("minimize", "maximize")
# What each part must be: its base class, and an example to write instead.
COMPONENT_BASES = {
    "sampler": ("optuna.samplers.BaseSampler", "optuna.samplers.TPESampler"),
    "pruner": ("optuna.pruners.BasePruner", "optuna.pruners.MedianPruner"),
}
OBJECTIVES = {
    "last": "the metric at the final epoch",
    "best": "the metric at its best epoch, in the study's direction (what best.ckpt holds)",
}


@dataclass
class OptimizeConfig:
    """How to search. Field comments mirror configs/optimize_template.yaml."""

    study_name: str = "Optimize_MLP_Example"
    trials: int = 20  # the study's total, across restarts and workers
    seed: int | None = 42  # seeds the sampler
    metric: str = "val_loss"  # any metric the LightningModule logs; the study optimizes it
    direction: str = "minimize"
    objective: str = (
        "last"  # what a trial returns: last (the final epoch's metric) or best (its best epoch's)
    )
    sampler: dict[str, Any] = field(
        default_factory=lambda: {"name": "optuna.samplers.TPESampler", "kwargs": {}}
    )
    pruner: dict[str, Any] = field(
        default_factory=lambda: {"name": "lightning_hpo.PFLPruner", "kwargs": {}}
    )
    search_space: dict[str, Any] = field(default_factory=dict)
    params: list[Param] = field(default_factory=list, repr=False)
    # The sampler and pruner classes by import path, resolved once (``component``).
    _classes: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def value_name(self) -> str:
        """How a trial's value is named in lines and reports: ``val_loss``, or
        ``val_loss (best epoch)`` with ``objective: best``."""
        return self.metric if self.objective == "last" else f"{self.metric} (best epoch)"

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def component(self, part: str, source: str = "<optimize config>") -> Any:
        """The class ``sampler.name`` or ``pruner.name`` names, resolved once."""
        path = getattr(self, part)["name"]
        if path not in self._classes:
            self._classes[path] = resolve(path, source, f"{part}.name")
        return self._classes[path]

    def suggest(self, trial, base: RunConfig) -> RunConfig:
        """The run config for ``trial``: the base config with every suggested value merged in."""
        data = base.to_dict()
        for p in self.params:
            p.apply(data, p.suggest(trial))
        return base.merged(data, f"trial {trial.number}")

    def merge(self, base: RunConfig, params: dict[str, Any]) -> RunConfig:
        """``base`` with stored trial ``params`` (by Optuna name) merged in."""
        data = base.to_dict()
        for p in self.params:
            if p.name in params:
                p.apply(data, params[p.name])
        return base.merged(data, "best trial")

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self.params}

    def sampler_seed(self) -> int | None:
        """The sampler's seed: ``sampler.kwargs.seed`` when given there, else ``seed``."""
        kwargs = self.sampler.get("kwargs") or {}
        return kwargs["seed"] if kwargs.get("seed") is not None else self.seed

    def make_sampler(self, seed_offset: int = 0):
        """The sampler the config names, seeded with its seed + ``seed_offset``; GridSampler
        gets its grid here."""
        cls = self.component("sampler")
        kwargs = dict(self.sampler.get("kwargs") or {})
        accepted = accepted_kwargs(cls)
        if cls.__name__ == "GridSampler" and "search_space" not in kwargs:
            kwargs["search_space"] = {p.name: p.grid() for p in self.params}
        seed = self.sampler_seed()
        if seed is not None and (accepted is None or "seed" in accepted):
            # Wrapped into numpy's range: a seed near its top plus a trial number still fits.
            kwargs["seed"] = (seed + seed_offset) % (SEED_RANGE[1] + 1)
        return cls(**kwargs)

    def seed_per_trial(self) -> bool:
        """Whether the sampler is recreated for every trial with its seed + ``trial.number``,
        however the seed is given (``seed:`` or ``sampler.kwargs.seed``): workers then never
        replay each other's suggestions, and one worker's search stays reproducible.

        Not for GridSampler and QMCSampler, which derive their whole sequence from the seed
        and spread the trials of several workers over it themselves.
        """
        if self.sampler_seed() is None:
            return False
        cls = self.component("sampler")
        accepted = accepted_kwargs(cls)
        return cls.__name__ not in ("GridSampler", "QMCSampler") and (
            accepted is None or "seed" in accepted
        )

    def make_pruner(self):
        cls = self.component("pruner")
        return cls(**dict(self.pruner.get("kwargs") or {}))


FIELDS = tuple(f.name for f in dataclasses.fields(OptimizeConfig) if f.init and f.name != "params")


def optimize_config_from_dict(
    data: dict[str, Any], run: RunConfig, source: str, resolve_imports: bool = True
) -> OptimizeConfig:
    """Validate an optimize mapping against the run config it will tune.

    Args:
        resolve_imports: also import and build the sampler and pruner and check each
            searched keyword against its target (see ``check_optimize_components``).
            The rest needs no import, so structural errors answer at once.
    """
    for key in data:
        if key not in FIELDS:
            raise unknown_key(source, str(key), list(FIELDS))
    cfg = OptimizeConfig(**data)
    if not isinstance(cfg.study_name, str) or not cfg.study_name.strip():
        raise ConfigError(
            source,
            "study_name",
            f"expected a non-empty string, got {cfg.study_name!r}",
            "name the study",
        )
    if not is_int(cfg.trials) or cfg.trials <= 0:
        raise ConfigError(
            source,
            "trials",
            f"expected a positive integer, got {cfg.trials!r}",
            "set trials to the study's total, e.g. 20",
        )
    lo, hi = SEED_RANGE
    if cfg.seed is not None and not (is_int(cfg.seed) and in_seed_range(cfg.seed)):
        raise ConfigError(
            source,
            "seed",
            f"expected an integer from {lo} to {hi} (numpy's range) or null, got {cfg.seed!r}",
            "e.g. seed: 42",
        )
    if cfg.direction not in DIRECTIONS:
        raise ConfigError(
            source,
            "direction",
            f"expected minimize or maximize, got {cfg.direction!r}",
            "set direction: minimize or direction: maximize",
        )
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(
            source,
            "objective",
            f"expected last or best, got {cfg.objective!r}",
            "objective: last (the final epoch's metric) or best (its best epoch's)",
        )
    problem = metric_name_problem(cfg.metric)
    if problem:
        # Whether the module logs it is known once it validates a batch (preflight).
        raise ConfigError(
            source, "metric", problem, "name a metric the LightningModule logs, e.g. val_loss"
        )
    for part in ("sampler", "pruner"):
        spec = getattr(cfg, part)
        if isinstance(spec, str):
            spec = {"name": spec}
        if spec is None and part == "pruner":
            spec = {"name": "optuna.pruners.NopPruner"}
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(
                source,
                part,
                f"expected {{name: <import path>, kwargs: {{...}}}}, got {spec!r}",
                f"e.g. {part}: {{name: optuna.{part}s.{'TPESampler' if part == 'sampler' else 'MedianPruner'}}}",
            )
        for k in spec:
            if k not in ("name", "kwargs"):
                raise unknown_key(source, str(k), ["name", "kwargs"], prefix=f"{part}.")
        kwargs = spec.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(
                source,
                f"{part}.kwargs",
                f"expected a mapping, got {kwargs!r}",
                "write keyword arguments as a mapping",
            )
        setattr(cfg, part, {"name": spec["name"], "kwargs": kwargs})
    sampler_seed = cfg.sampler["kwargs"].get("seed")
    if sampler_seed is not None and not (is_int(sampler_seed) and in_seed_range(sampler_seed)):
        raise ConfigError(
            source,
            "sampler.kwargs.seed",
            f"expected an integer from {lo} to {hi} (numpy's range), got {sampler_seed!r}",
            "e.g. seed: 0",
        )
    cfg.params = parse_space(cfg.search_space, run, source)
    for p in cfg.params:
        if p.group is None and p.type == "float":
            raise ConfigError(
                source,
                p.where,
                f"{p.key} is an integer, but the search type is float",
                "use type: int (with step if you like) or categorical",
            )
    # A config the search could produce must itself be valid: try the range ends.
    for p in cfg.params:
        for value in [p.min, p.max] if p.type != "categorical" else p.choices:
            data = run.to_dict()
            p.apply(data, value)
            try:
                run_config_from_dict(data, source)
            except ConfigError as exc:
                raise ConfigError(
                    source,
                    p.where,
                    f"value {value!r} is invalid for the run config ({exc.problem})",
                    "narrow the range",
                ) from None
    if resolve_imports:
        check_optimize_components(cfg, run, source)
    return cfg


def check_optimize_components(cfg: OptimizeConfig, run: RunConfig, source: str) -> None:
    """Import and build the sampler and pruner; check searched keywords against their targets."""
    for part in ("sampler", "pruner"):
        spec = getattr(cfg, part)
        obj = cfg.component(part, source)
        if isinstance(obj, type):
            check_component_kind(part, obj, spec["name"], source)
        check_kwargs(
            obj,
            spec["kwargs"],
            source,
            f"{part}.kwargs",
            skip=("search_space",) if part == "sampler" else (),
        )
    for p in cfg.params:
        if run.own_parts and p.group in PART_KEYS:
            raise unused_part(run, p.group, source)
        target = kwargs_target(run, p.group) if p.group else None
        if target is not None:
            check_kwargs(target, {p.key: None}, source, f"search_space.{p.group}", require=False)
        if p.group == "module_config":
            check_module_config(target, [p.key], source, "search_space.module_config")
    for part, make in (("sampler", cfg.make_sampler), ("pruner", cfg.make_pruner)):
        try:
            built = make()
        except Exception as exc:  # noqa: BLE001 - the constructor's own message says what is wrong
            named = [k for k in cfg.__dict__[part]["kwargs"] if k in str(exc)]
            key = f"{part}.kwargs" + (f".{named[0]}" if named else "")
            raise ConfigError(
                source,
                key,
                f"{cfg.__dict__[part]['name']} rejected its arguments: {exc}",
                f"fix {key}",
            ) from None
        # A factory function rather than a class: what it returns must be of the right kind.
        check_component_kind(part, type(built), cfg.__dict__[part]["name"], source)
    if cfg.component("sampler").__name__ == "GridSampler":
        for p in cfg.params:
            if p.type == "float" and p.step is None and "search_space" not in cfg.sampler["kwargs"]:
                raise ConfigError(
                    source,
                    p.where,
                    "GridSampler needs a finite grid, but this float has no step",
                    "add a step, or use type: categorical",
                )


def check_component_kind(part: str, cls: type, name: str, source: str) -> None:
    """Raise ConfigError unless ``cls`` is an Optuna sampler (``part`` sampler) or pruner: a
    pruner given as the sampler would fail once the study exists, a sampler given as the
    pruner every trial."""
    base_path, example = COMPONENT_BASES[part]
    base = resolve(base_path, source, f"{part}.name")
    if issubclass(cls, base):
        return
    other = next(p for p in COMPONENT_BASES if p != part)
    kind = (
        f"a {other}, not a {part}"
        if issubclass(cls, resolve(COMPONENT_BASES[other][0], source, f"{part}.name"))
        else f"not a {part}"
    )
    raise ConfigError(
        source,
        f"{part}.name",
        f"{name} is {kind} (expected a subclass of {base_path})",
        f"name an Optuna {part}, e.g. {part}: {{name: {example}}}",
    )


def load_optimize_config(
    path: str | Path | Mapping[str, Any],
    run: RunConfig,
    trials: int | None = None,
    resolve_imports: bool = True,
    study_name: str | None = None,
) -> OptimizeConfig:
    """Load and validate an optimize config; ``trials`` and ``study_name`` override the
    file's (--trials, --study-name)."""
    data = copy.deepcopy(dict(path)) if isinstance(path, Mapping) else load_yaml(path)
    for key, value in (("trials", trials), ("study_name", study_name)):
        if value is not None:
            data[key] = value
    return optimize_config_from_dict(
        data, run, config_source(path, "<optimize config>"), resolve_imports
    )
