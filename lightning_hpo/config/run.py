"""The run config: what one training run trains, on what, for how long.

Loading is strict. Every key is known, typed and range-checked, and every import
path is resolved, before anything is written to disk.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_hpo.config.class_paths import CALLBACKS, LOGGERS, check_classes, check_entries
from lightning_hpo.config.imports import check_kwargs, resolve
from lightning_hpo.config.lightning_args import (
    check_device,
    check_not_zero,
    check_owned,
    check_strategy,
    check_trainer_config,
    check_validates,
)
from lightning_hpo.config.module_contract import (
    DEFAULT_MODULE,
    PART_KEYS,
    SCHEDULE_INTERVAL,
    SCHEDULE_INTERVALS,
    builds_own_parts,
    check_module,
    scheduler_interval,
)
from lightning_hpo.config.validation import is_int
from lightning_hpo.config.yamlio import load_yaml
from lightning_hpo.errors import ConfigError

_EARLY_STOPPING = {"enabled": False, "patience": 10, "min_delta": 0.0}
_CHECKPOINT = {"save_best": True, "save_last": True}
_KIND = {bool: "true or false", int: "an integer", float: "a number"}
IMPORT_FIELDS = ("net", "optimizer", "scheduler", "criterion", "data", "module")
# The seeds numpy (and so Lightning's seed_everything) accepts: 0 to 2**32 - 1.
SEED_RANGE = (0, 2**32 - 1)


def in_seed_range(seed: int) -> bool:
    """Whether numpy (and Lightning's seed_everything) takes ``seed`` (``SEED_RANGE``)."""
    return SEED_RANGE[0] <= seed <= SEED_RANGE[1]


_DEVICE = re.compile(r"^(auto|cpu|mps|gpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class Components:
    """What a run config's import paths name, resolved once: classes and functions.

    ``paths`` are the import paths they were resolved from, so a config whose paths
    changed is resolved again rather than served another config's components. ``own_parts``:
    the module builds its own network, loss and optimizer (``builds_own_parts``).
    """

    paths: tuple[str | None, ...]
    net: Callable
    optimizer: Callable
    scheduler: Callable | None
    criterion: Callable
    data: Callable
    module: type
    own_parts: bool = False


@dataclass
class RunConfig:
    """One training run per seed. Field comments mirror configs/run_template.yaml."""

    project: str = "MLP_Example"  # runs go to runs/<project>/<group>/<seed>
    device: str = "auto"  # auto: the GPU when present, else the CPU; or cpu, cuda, cuda:1, mps
    seeds: list[int] = field(default_factory=lambda: [89, 231, 928])
    epochs: int = 50
    batch_size: int = 256
    net: str = "lightning_hpo.builtin.MLP"  # any nn.Module class
    optimizer: str = "torch.optim.AdamW"  # any torch optimizer class
    scheduler: str | None = "torch.optim.lr_scheduler.CosineAnnealingLR"  # or null
    criterion: str = "torch.nn.MSELoss"  # any loss module class or function
    data: str = (
        "lightning_hpo.builtin.synthetic_regression"  # (train, val) factory or LightningDataModule
    )
    module: str = DEFAULT_MODULE  # the LightningModule class: the built-in, or your own
    net_config: dict[str, Any] = field(
        default_factory=lambda: {"nodes": 64, "layers": 4, "activation": "GELU"}
    )
    optimizer_config: dict[str, Any] = field(default_factory=lambda: {"lr": 5.0e-3})
    scheduler_config: dict[str, Any] = field(default_factory=lambda: {"eta_min": 1.0e-5})
    criterion_config: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)
    module_config: dict[str, Any] = field(default_factory=dict)  # the module's own extra arguments
    early_stopping_config: dict[str, Any] = field(default_factory=lambda: dict(_EARLY_STOPPING))
    checkpoint_config: dict[str, Any] = field(default_factory=lambda: dict(_CHECKPOINT))
    strategy: str = "auto"  # Lightning strategy, e.g. ddp_spawn
    devices: int | str = 1  # devices per run, or "auto"
    fuse_seeds: bool | str = (
        "auto"  # train all seeds in one Trainer: auto (when the run allows), true, false
    )
    trainer_config: dict[str, Any] = field(
        default_factory=dict
    )  # extra lightning.Trainer keyword arguments (lightning_args.OWNED are refused)
    # Lightning callbacks, each {class_path, init_args}: e.g. LearningRateMonitor
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    # Loggers instead of TensorBoard (the default), each {class_path, init_args}: CSV, MLflow, W&B
    loggers: list[dict[str, Any]] = field(default_factory=list)
    # The import paths resolved (``components``): built once, shared by the copies made for trials.
    _components: Components | None = field(default=None, init=False, repr=False, compare=False)
    # The keys its file or mapping gave (the others are defaults): build refuses PART_KEYS
    # given for a module that builds its own parts.
    _given: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    @property
    def own_parts(self) -> bool:
        """The module builds its own network, loss and optimizer from ``module_config``."""
        return self.components.own_parts

    def to_dict(self) -> dict[str, Any]:
        """The config as a mapping; without ``PART_KEYS`` (unused) once resolved to a module
        that builds its own parts."""
        unused = PART_KEYS if self._components is not None and self.own_parts else ()
        return {n: copy.deepcopy(getattr(self, n)) for n in _field_names() if n not in unused}

    def import_paths(self) -> tuple[str | None, ...]:
        return tuple(getattr(self, name) for name in IMPORT_FIELDS)

    @property
    def components(self) -> Components:
        """The classes and functions the import paths name, resolved on first use (``build``
        resolves them at load time, naming the file in its errors) and kept."""
        if self._components is None or self._components.paths != self.import_paths():
            self._components = resolve_components(self)
        return self._components

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (not checked), keeping the resolved components."""
        new = dataclasses.replace(self, **changes)
        new._components, new._given = self._components, self._given
        return new

    def merged(self, data: dict[str, Any], source: str) -> RunConfig:
        """The config ``data`` (this config's mapping with values changed) describes, checked
        like a file's, keeping the resolved components: a trial's or a corner's config."""
        new = run_config_from_dict(data, source)
        new._components = self._components
        return new

    def group_name(self) -> str:
        """A readable folder name from the network, its settings and the learning rate (or,
        for a module that builds its own parts, from the module and its settings)."""
        own = self._components is not None and self.own_parts
        name, settings = (self.module, self.module_config) if own else (self.net, self.net_config)
        parts = [name.rsplit(".", 1)[-1]]
        parts += [f"{k[0]}{_short(v)}" for k, v in settings.items() if _is_scalar(v)]
        if not own:
            parts.append(self.optimizer.rsplit(".", 1)[-1])
        if not own and "lr" in self.optimizer_config:
            parts.append(f"lr{_short(self.optimizer_config['lr'])}")
        parts.append(f"b{self.batch_size}")
        parts.append(f"e{self.epochs}")
        return re.sub(r"[^\w.\-+=]", "-", "_".join(parts))


def config_source(config: str | Path | Mapping[str, Any], name: str) -> str:
    """What errors call a config: its file, or ``name`` for a mapping given in Python."""
    return name if isinstance(config, Mapping) else str(config)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool))


def _short(value: Any) -> str:
    return f"{value:.1e}" if isinstance(value, float) else str(value)


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig) if f.init]


def _expected(name: str) -> str:
    kinds = {
        "seeds": f"a list of distinct integers from {SEED_RANGE[0]} to {SEED_RANGE[1]}",
        "epochs": "a positive integer",
        "batch_size": "a positive integer",
        "devices": 'a positive integer or "auto"',
        "scheduler": "an import path or null",
        "fuse_seeds": "auto, true or false",
    }
    if name in kinds:
        return kinds[name]
    return "a mapping" if name.endswith("_config") else "a string"


def unknown_key(source: str, key: str, valid: list[str], prefix: str = "") -> ConfigError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    fix = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
    return ConfigError(source, prefix + key, "unknown key", fix)


def _check_value(name: str, value: Any, source: str) -> Any:
    """Type- and range-check one top-level field, returning the normalised value."""

    def bad(problem: str | None = None, fix: str | None = None) -> ConfigError:
        got = f"got {value!r}"
        return ConfigError(
            source,
            name,
            problem or f"expected {_expected(name)}, {got}",
            fix or f"set {name} to {_expected(name)}",
        )

    if name in ("epochs", "batch_size"):
        if not is_int(value):
            raise bad()
        if value <= 0:
            raise bad(f"must be > 0, got {value}")
        return value
    if name == "seeds":
        if is_int(value):
            value = [value]
        if not isinstance(value, list) or not all(is_int(s) for s in value):
            raise bad()
        if not value:
            raise bad("is empty", "list at least one seed, e.g. [42]")
        outside = [s for s in value if not in_seed_range(s)]
        if outside:
            raise bad(
                f"seed {outside[0]} is outside {SEED_RANGE[0]}..{SEED_RANGE[1]} (numpy's range)",
                f"use seeds from {SEED_RANGE[0]} to {SEED_RANGE[1]}, e.g. [42]",
            )
        dupes = sorted({s for s in value if value.count(s) > 1})
        if dupes:
            raise bad(f"duplicate seed(s) {dupes}", "list each seed once")
        return list(value)
    if name == "fuse_seeds":
        if value == "auto" or isinstance(value, bool):
            return value
        raise bad()
    if name == "devices":
        if value == "auto" or (is_int(value) and value > 0):
            return value
        raise bad()
    if name == "scheduler" and value is None:
        return None
    if name in (CALLBACKS, LOGGERS):
        return check_entries(name, value, source)
    if name.endswith("_config"):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if not isinstance(value, str) or not value.strip():
        raise bad()
    if name == "device" and not _DEVICE.match(value):
        raise bad(f"unknown device {value!r}", "use auto, cpu, cuda, cuda:<index> or mps")
    if name == "project" and not re.fullmatch(r"[\w.\-+=]+", value):
        raise bad(
            f"{value!r} is not a usable folder name", "use letters, digits, '_', '-' and '.' only"
        )
    return value


def _check_section(name: str, value: dict, defaults: dict, source: str) -> dict:
    """A fixed-schema section such as early_stopping_config: known keys, default types."""
    merged = dict(defaults)
    for key, item in value.items():
        if key not in defaults:
            raise unknown_key(source, key, list(defaults), prefix=f"{name}.")
        expected = type(defaults[key])
        ok = isinstance(item, expected) and not (expected is not bool and isinstance(item, bool))
        if expected is float and is_int(item):
            item, ok = float(item), True
        if not ok:
            raise ConfigError(
                source,
                f"{name}.{key}",
                f"expected {_KIND[expected]}, got {item!r}",
                f"set it like the default ({defaults[key]!r})",
            )
        if expected in (int, float) and (item < 0 or not math.isfinite(item)):
            raise ConfigError(
                source,
                f"{name}.{key}",
                f"must be a finite number >= 0, got {item!r}",
                f"set it like the default ({defaults[key]!r})",
            )
        merged[key] = item
    return merged


def run_config_from_dict(data: dict[str, Any], source: str = "<run config>") -> RunConfig:
    """Validate a plain mapping into a RunConfig. Imports are not resolved here."""
    names = _field_names()
    for key in data:
        if key not in names:
            raise unknown_key(source, str(key), names)
    values = {k: _check_value(k, v, source) for k, v in data.items()}
    values["early_stopping_config"] = _check_section(
        "early_stopping_config", values.get("early_stopping_config", {}), _EARLY_STOPPING, source
    )
    values["checkpoint_config"] = _check_section(
        "checkpoint_config", values.get("checkpoint_config", {}), _CHECKPOINT, source
    )
    interval = scheduler_interval(values.get("scheduler_config", {}))
    if interval not in SCHEDULE_INTERVALS:
        raise ConfigError(
            source,
            "scheduler_config.interval",
            f"expected epoch or step, got {interval!r}",
            "interval: epoch (the schedule steps once an epoch, the default) or step (after "
            "every optimizer step, e.g. OneCycleLR or a warm-up)",
        )
    check_owned(values.get("trainer_config", {}), source)
    check_not_zero(values.get("trainer_config", {}), source)
    cfg = RunConfig(**values)
    cfg._given = frozenset(values)
    check_validates(cfg.trainer_config, cfg.epochs, source)
    if cfg.device not in ("auto", "cpu") and ":" in cfg.device and cfg.devices != 1:
        raise ConfigError(
            source,
            "devices",
            f"device {cfg.device!r} names one device but devices is {cfg.devices}",
            "use device: cuda with devices: N",
        )
    return cfg


def resolve_components(cfg: RunConfig, source: str = "<run config>") -> Components:
    """Import every path the config names, once."""
    objects = {
        name: None if path is None else resolve(path, source, name)
        for name, path in zip(IMPORT_FIELDS, cfg.import_paths())
    }
    module = objects["module"]
    own = isinstance(module, type) and builds_own_parts(module)
    return Components(paths=cfg.import_paths(), own_parts=own, **objects)


def build(cfg: RunConfig, source: str = "<run config>") -> RunConfig:
    """Resolve the config's import paths (once: ``cfg.components`` keeps them) and check
    each component's keyword arguments, the module, the scheduler, the device, the strategy
    and ``trainer_config``. Returns ``cfg``."""
    module = resolve(cfg.module, source, "module")  # first: it decides which keys apply
    check_module(module, cfg.module, cfg.module_config, cfg._given, source)
    cfg._components = resolve_components(cfg, source)
    for name in IMPORT_FIELDS[:-1]:
        obj = getattr(cfg.components, name)
        if obj is None or (cfg.own_parts and name in PART_KEYS):
            continue
        kwargs = getattr(cfg, f"{name}_config")
        # Arguments the trainer supplies itself are not the user's to misspell.
        supplied = {
            "net": ("in_features", "out_features"),
            "optimizer": ("params",),
            "scheduler": ("optimizer", "T_max", "total_steps"),
        }
        if name == "scheduler":
            kwargs = {k: v for k, v in kwargs.items() if k != SCHEDULE_INTERVAL}
        check_kwargs(obj, kwargs, source, f"{name}_config", skip=supplied.get(name, ()))
    check_scheduler(cfg, source)
    for name in (CALLBACKS, LOGGERS):
        check_classes(name, getattr(cfg, name), cfg.project, source)
    check_device(cfg.device, source)
    check_strategy(cfg.strategy, source)
    from lightning_hpo.config.lightning_args import accelerator_and_devices  # imports Lightning

    check_trainer_config(
        cfg.trainer_config, *accelerator_and_devices(cfg.device, cfg.devices), source
    )
    return cfg


def check_scheduler(cfg: RunConfig, source: str) -> None:
    """Refuse a scheduler that steps on a metric (ReduceLROnPlateau) where the built-in
    ``configure_optimizers`` would hand it none."""
    if cfg.scheduler is None:
        return
    import torch

    from lightning_hpo.builtin.supervised import SupervisedModule

    scheduler, module = cfg.components.scheduler, cfg.components.module
    plateau = isinstance(scheduler, type) and issubclass(
        scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau
    )
    if plateau and module.configure_optimizers is SupervisedModule.configure_optimizers:
        raise ConfigError(
            source,
            "scheduler",
            f"{cfg.scheduler} steps on a metric, which the built-in module does not give it",
            "use a schedule that steps by epoch (CosineAnnealingLR, StepLR, ...), or a module "
            "of your own whose configure_optimizers names the metric",
        )


def load_run_config(
    path: str | Path | Mapping[str, Any],
    overrides: dict[str, Any] | None = None,
    resolve_imports: bool = True,
) -> RunConfig:
    """Load, validate and resolve a run config.

    Args:
        path: the YAML file, or the config as a mapping (named ``<run config>`` in errors).
        overrides: values from the command line (e.g. ``{"epochs": 3}``), checked like the file's.
        resolve_imports: also import every named component, once, and check them (``build``); the
            structural checks before it need no import, so they answer at once.
    """
    source = config_source(path, "<run config>")
    data = copy.deepcopy(dict(path)) if isinstance(path, Mapping) else load_yaml(path)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = _check_value(key, value, f"--{key.replace('_', '-')}")
    cfg = run_config_from_dict(data, source)
    return build(cfg, source) if resolve_imports else cfg
