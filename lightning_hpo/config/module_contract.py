"""The module contract: what a run hands its LightningModule's constructor itself, and the check that ``module_config`` fits the constructor (following ``**kwargs`` up to the classes it inherits from).

A module whose constructor takes none of the run's parts (``net``, ``criterion``,
``optimizer``) is a LightningModule as people write it (``builds_own_parts``): it is built
from ``module_config`` alone and its own ``configure_optimizers`` is used, so the run
config's keys that build the parts (``PART_KEYS``) do not apply to it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from lightning_hpo.config.imports import accepted_kwargs
from lightning_hpo.errors import ConfigError

DEFAULT_MODULE = "lightning_hpo.builtin.SupervisedModule"


# What a run hands its LightningModule's constructor itself (the README's module contract):
# built from the config's own keys, so never set in module_config. run_config only when taken.
MODULE_ARGUMENTS = (
    "net",
    "criterion",
    "optimizer",
    "optimizer_config",
    "scheduler",
    "scheduler_config",
    "epochs",
    "run_config",
)

# The arguments that make a module the contract's: a module taking none of them builds its own.
PARTS = ("net", "criterion", "optimizer")

# The run config's keys that build the contract's parts; a module that builds its own uses none.
PART_KEYS = (
    "net",
    "net_config",
    "criterion",
    "criterion_config",
    "optimizer",
    "optimizer_config",
    "scheduler",
    "scheduler_config",
)


def builds_own_parts(cls: type) -> bool:
    """Whether ``cls``'s constructor takes none of the run's parts (``PARTS``), so it builds
    its network, loss and optimizer itself, from ``module_config`` alone. A constructor whose
    ``**kwargs`` reach one that takes any argument is the contract's."""
    accepted = init_arguments(cls)
    return accepted is not None and not accepted & set(PARTS)


def check_module_config(
    cls: type, keys: Iterable[str], source: str, prefix: str = "module_config"
) -> None:
    """Refuse a ``module_config`` key the module's constructor does not take, following
    ``**kwargs`` handed on to ``super().__init__`` (``init_arguments``)."""
    accepted = init_arguments(cls)
    if accepted is None:
        return
    valid = sorted(accepted - (set() if builds_own_parts(cls) else set(MODULE_ARGUMENTS)))
    for key in keys:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            raise ConfigError(
                source,
                f"{prefix}.{key}",
                f"{cls.__qualname__} takes no argument '{key}'",
                f"did you mean '{near[0]}'?"
                if near
                else f"valid keys: {', '.join(valid) or 'none'}",
            )


def init_arguments(cls: type) -> set[str] | None:
    """The keyword arguments a class's constructor takes, following ``**kwargs`` up the
    classes it inherits from (a subclass that hands them on to ``super().__init__``);
    None when they reach a constructor that takes any."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        accepted = accepted_kwargs(klass.__init__)
        if accepted is not None:
            return names | (accepted - {"self"})
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        names.discard("self")
    return None


# scheduler_config's own key, which the module reads (not an argument of the scheduler).
SCHEDULE_INTERVAL = "interval"
SCHEDULE_INTERVALS = ("epoch", "step")  # once an epoch (the default), or after every optimizer step


def scheduler_interval(scheduler_config: Mapping[str, Any]) -> str:
    """How often the schedule steps: ``scheduler_config.interval``, ``epoch`` by default."""
    return scheduler_config.get(SCHEDULE_INTERVAL, SCHEDULE_INTERVALS[0])


def check_module(
    cls: Any, path: str, module_config: Mapping[str, Any], given: Iterable[str], source: str
) -> None:
    """``module`` (``path``, resolved to ``cls``) names a LightningModule class that either takes
    the run's arguments (``MODULE_ARGUMENTS``) and ``module_config``, or builds its own parts
    from ``module_config`` alone, when none of the run config's ``PART_KEYS`` may be ``given``."""
    import lightning.pytorch as pl

    from lightning_hpo.config.imports import check_kwargs

    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise ConfigError(
            source,
            "module",
            f"{path} is not a lightning.pytorch.LightningModule subclass",
            f"name one, e.g. a subclass of {DEFAULT_MODULE}",
        )
    own = builds_own_parts(cls)
    for key in PART_KEYS if own else ():
        if key in given:
            raise ConfigError(
                source,
                key,
                f"is not used: {path} takes no {'/'.join(PARTS)} argument, so it is built from "
                "module_config alone and its own configure_optimizers is used",
                f"remove {key}; set the module's own arguments in module_config instead",
            )
    for key in () if own else module_config:
        if key in MODULE_ARGUMENTS:
            raise ConfigError(
                source,
                f"module_config.{key}",
                "is handed to the module by the run itself",
                "set it through the run config's own keys; module_config holds only the "
                f"module's other arguments ({', '.join(MODULE_ARGUMENTS)} are the run's)",
            )
    accepted = init_arguments(cls)
    missing = [a for a in MODULE_ARGUMENTS if a != "run_config" and a not in (accepted or (a,))]
    if missing and not own:
        raise ConfigError(
            source,
            "module",
            f"{path} takes no argument {missing[0]!r}, but the run constructs it with "
            + ", ".join(f"{a}=..." for a in MODULE_ARGUMENTS if a != "run_config")
            + f" because it takes {', '.join(a for a in PARTS if a in accepted)}",
            f"accept those arguments (or **kwargs), e.g. subclass {DEFAULT_MODULE}; or take none "
            f"of {', '.join(PARTS)} and build them in the module from module_config",
        )
    check_module_config(cls, module_config, source)
    check_kwargs(
        cls, dict(module_config), source, "module_config", skip=() if own else MODULE_ARGUMENTS
    )
