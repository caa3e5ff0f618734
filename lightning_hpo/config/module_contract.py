"""The module contract: what a run hands its LightningModule's constructor itself, and the check that ``module_config`` fits the constructor (following ``**kwargs`` up to the classes it inherits from)."""

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


def check_module_config(
    cls: type, keys: Iterable[str], source: str, prefix: str = "module_config"
) -> None:
    """Refuse a ``module_config`` key the module's constructor does not take, following
    ``**kwargs`` handed on to ``super().__init__`` (``init_arguments``)."""
    accepted = init_arguments(cls)
    if accepted is None:
        return
    valid = sorted(accepted - set(MODULE_ARGUMENTS))
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
