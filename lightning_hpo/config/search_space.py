"""The search space: one ``Param`` per searched value, parsed and checked from its spec
(``{type, min, max, step, log, choices}``), suggested by a trial and merged into a run config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lightning_hpo.config.lightning_args import KEY as TRAINER_KEY
from lightning_hpo.config.lightning_args import NOT_WHEN_TUNING, OWNED
from lightning_hpo.config.module_contract import PART_KEYS
from lightning_hpo.config.run import IMPORT_FIELDS, RunConfig, unknown_key
from lightning_hpo.config.validation import is_number
from lightning_hpo.errors import ConfigError

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
        """The Optuna parameter name: ``<group>_<param>``, e.g. ``optimizer_config_lr``."""
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
            return d.IntDistribution(
                int(self.min), int(self.max), log=self.log, step=int(self.step or 1)
            )
        return d.FloatDistribution(self.min, self.max, log=self.log, step=self.step)

    def suggest(self, trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(
                self.name, int(self.min), int(self.max), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.min, self.max, step=self.step, log=self.log)

    def grid(self) -> list[Any]:
        """Every value, for GridSampler."""
        if self.type == "categorical":
            return list(self.choices)
        step = self.step or 1
        count = int(round((self.max - self.min) / step)) + 1
        values = [self.min + i * step for i in range(count)]
        return [int(v) for v in values] if self.type == "int" else values


def _number(value: Any, source: str, key: str) -> float:
    if not is_number(value):
        raise ConfigError(
            source, key, f"expected a number, got {value!r}", "write it as a number, e.g. 1.0e-3"
        )
    if not math.isfinite(value):
        raise ConfigError(source, key, f"must be finite, got {value}", "use a finite bound")
    return value


def parse_param(group: str | None, key: str, spec: Any, source: str) -> Param:
    """Check one parameter's spec; every rule names the key it broke."""
    where = f"search_space.{group}.{key}" if group else f"search_space.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(
            source,
            where,
            f"expected a mapping like {{type: float, min: 0.1, max: 1.0}}, got {spec!r}",
            "describe the parameter with type/min/max or type/choices",
        )
    for k in spec:
        if k not in SPEC_KEYS:
            raise unknown_key(source, str(k), list(SPEC_KEYS), prefix=f"{where}.")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError(
            source, f"{where}.type", f"unknown type {kind!r}", f"use one of: {', '.join(TYPES)}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        extra = [k for k in ("min", "max", "step", "log") if k in spec]
        if extra:
            raise ConfigError(
                source,
                f"{where}.{extra[0]}",
                "does not apply to a categorical parameter",
                "give only choices",
            )
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                source,
                f"{where}.choices",
                f"expected a non-empty list, got {choices!r}",
                "list at least one choice, e.g. [32, 64]",
            )
        bad = [c for c in choices if c is not None and not isinstance(c, (bool, int, float, str))]
        if bad:
            raise ConfigError(
                source,
                f"{where}.choices",
                f"choices must be numbers, strings, booleans or null, got {bad[0]!r}",
                "list plain values",
            )
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(
                source,
                f"{where}.choices",
                f"duplicate choices in {choices}",
                "list each choice once",
            )
        return Param(group, key, kind, choices=list(choices))
    if "choices" in spec:
        raise ConfigError(
            source,
            f"{where}.choices",
            f"does not apply to a {kind} parameter",
            "use type: categorical, or give min/max",
        )
    for bound in ("min", "max"):
        if bound not in spec:
            raise ConfigError(
                source,
                f"{where}.{bound}",
                "is missing",
                f"give both min and max for a {kind} parameter",
            )
    low, high = (
        _number(spec["min"], source, f"{where}.min"),
        _number(spec["max"], source, f"{where}.max"),
    )
    step = spec.get("step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(
            source,
            f"{where}.log",
            f"expected true or false, got {log!r}",
            "write log: true or log: false",
        )
    if kind == "int":
        for k, v in (("min", low), ("max", high), ("step", step)):
            if v is not None and not isinstance(v, int):
                raise ConfigError(
                    source,
                    f"{where}.{k}",
                    f"expected an integer for an int parameter, got {v!r}",
                    "use whole numbers, or type: float",
                )
    if low > high:
        raise ConfigError(
            source, f"{where}.min", f"min ({low}) is greater than max ({high})", "swap them"
        )
    if log and low <= 0:
        raise ConfigError(
            source,
            f"{where}.min",
            f"a log-scaled range needs min > 0, got {low}",
            "raise min above 0 or set log: false",
        )
    if step is not None:
        step = _number(step, source, f"{where}.step")
        if log:
            raise ConfigError(
                source,
                f"{where}.step",
                "cannot be combined with log: true",
                "drop step or set log: false",
            )
        if step <= 0:
            raise ConfigError(
                source, f"{where}.step", f"must be > 0, got {step}", "use a positive step"
            )
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            raise ConfigError(
                source,
                f"{where}.step",
                f"{step} does not divide the range {low}..{high}",
                f"choose a step that divides {high - low}, or move max",
            )
    return Param(group, key, kind, low, high, step, log)


def parse_space(space: Any, run: RunConfig, source: str) -> list[Param]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(
            source,
            "search_space",
            f"expected a non-empty mapping of groups, got {space!r}",
            "search at least one parameter, see configs/optimize_template.yaml",
        )
    run_fields = run.to_dict()
    groups = [k for k, v in run_fields.items() if isinstance(v, dict)] + list(SCALAR_FIELDS)
    params: list[Param] = []
    for group, entries in space.items():
        if group in SCALAR_FIELDS:
            params.append(parse_param(None, group, entries, source))
            continue
        if group in PART_KEYS and run._components is not None and run.own_parts:
            raise unused_part(run, group, source)
        if group not in run_fields or not isinstance(run_fields[group], dict):
            raise unknown_key(source, str(group), groups, prefix="search_space.")
        if not isinstance(entries, dict) or not entries:
            raise ConfigError(
                source,
                f"search_space.{group}",
                f"expected a mapping of parameters, got {entries!r}",
                "list parameters under the group",
            )
        for key, spec in entries.items():
            if (
                group in ("early_stopping_config", "checkpoint_config")
                and key not in run_fields[group]
            ):
                raise unknown_key(
                    source, str(key), list(run_fields[group]), prefix=f"search_space.{group}."
                )
            if group == TRAINER_KEY and key in NOT_WHEN_TUNING:
                raise ConfigError(
                    source,
                    f"search_space.{group}.{key}",
                    "cannot be searched",
                    NOT_WHEN_TUNING[key],
                )
            if group == TRAINER_KEY and key in OWNED:
                raise ConfigError(
                    source,
                    f"search_space.{group}.{key}",
                    "is set by lightning-hpo, not trainer_config",
                    OWNED[key],
                )
            params.append(parse_param(group, str(key), spec, source))
    return params


def unused_part(run: RunConfig, group: str, source: str) -> ConfigError:
    """A search of ``group`` (one of ``PART_KEYS``) for a module that builds its own parts."""
    return ConfigError(
        source,
        f"search_space.{group}",
        f"is not used: {run.module} builds its own network, loss and optimizer",
        "search its own arguments under module_config instead",
    )


def kwargs_target(run: RunConfig, group: str):
    """The callable whose keyword arguments a ``<name>_config`` group holds, if any."""
    if group == TRAINER_KEY:
        import lightning.pytorch as pl

        return pl.Trainer
    name = group.removesuffix("_config")
    return getattr(run.components, name) if name in IMPORT_FIELDS else None
