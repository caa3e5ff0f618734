"""Resolve ``package.module.Name`` import paths: the one way configs name code."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from lightning_hpo.errors import ConfigError

# Import paths of lightning-hpo's own components before its modules were grouped into
# subpackages, as configs and checkpoints written then name them: one line says the new one.
MOVED = {
    "lightning_hpo.model.": "lightning_hpo.builtin.",
    "lightning_hpo.data.": "lightning_hpo.builtin.",
    "lightning_hpo.module.": "lightning_hpo.builtin.",
    "lightning_hpo.pruner.": "lightning_hpo.",
}


def _moved(path: str, source: str, key: str) -> ConfigError | None:
    for old, new in MOVED.items():
        if path.startswith(old):
            renamed = new + path.removeprefix(old)
            return ConfigError(
                source, key, f"'{path}' has moved to '{renamed}'", f"write {key}: {renamed}"
            )
    return None


def resolve(path: str, source: str = "<config>", key: str = "?") -> Any:
    """Import ``path`` (``module.attr[.attr...]``) and return the object it names.

    Args:
        path: a dotted import path such as ``torch.optim.AdamW``.
        source, key: where the path came from, for the error message.

    Raises:
        ConfigError: when the path does not resolve, with the nearest valid name.
    """
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            source,
            key,
            f"expected an import path such as 'torch.optim.AdamW', got {path!r}",
            "write the full dotted path",
        )
    moved = _moved(path, source, key)
    if moved is not None:
        raise moved
    parts = path.split(".")
    # Import the longest importable module prefix, then walk attributes.
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if (
                exc.name
                and not module_name.startswith(exc.name)
                and not exc.name.startswith(module_name)
            ):
                # The module exists but one of *its* imports is missing.
                raise ConfigError(
                    source,
                    key,
                    f"'{module_name}' failed to import: {exc}",
                    "install the missing package",
                ) from None
            continue
        except Exception as exc:  # noqa: BLE001 - user code may raise anything on import
            raise ConfigError(
                source,
                key,
                f"importing '{module_name}' raised {exc.__class__.__name__}: {exc}",
                "fix that module",
            ) from None
        break
    else:
        raise ConfigError(
            source,
            key,
            f"cannot import '{path}': no module '{parts[0]}'",
            "check the spelling, or install the package",
        )
    for i, attr in enumerate(parts[cut:], start=cut):
        if not hasattr(obj, attr):
            owner = ".".join(parts[:i])
            names = [n for n in dir(obj) if not n.startswith("_")]
            near = difflib.get_close_matches(attr, names, n=1)
            fix = (
                f"did you mean '{owner}.{near[0]}'?"
                if near
                else f"check the names defined in '{owner}'"
            )
            raise ConfigError(source, key, f"'{owner}' has no attribute '{attr}'", fix)
        obj = getattr(obj, attr)
    return obj


def accepted_kwargs(fn: Callable) -> set[str] | None:
    """Names ``fn`` accepts as keywords, or None when it takes ``**kwargs``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def required_kwargs(fn: Callable) -> set[str]:
    """Arguments ``fn`` cannot be called without."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {
        p.name
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_kwargs(
    fn: Callable,
    kwargs: dict,
    source: str,
    key: str,
    skip: tuple[str, ...] = (),
    require: bool = True,
) -> None:
    """Raise ConfigError for a keyword ``fn`` does not accept (naming the nearest one) or a
    required one that is missing. ``skip``: arguments the caller supplies itself."""
    missing = sorted(required_kwargs(fn) - set(kwargs) - set(skip)) if require else []
    if missing:
        raise ConfigError(
            source,
            f"{key}.{missing[0]}",
            f"{getattr(fn, '__qualname__', fn)} requires '{missing[0]}'",
            f"add {missing[0]} to {key}",
        )
    accepted = accepted_kwargs(fn)
    if accepted is None:
        return
    for name in kwargs:
        if name not in accepted:
            near = difflib.get_close_matches(name, sorted(accepted - set(skip)), n=1)
            fix = (
                f"did you mean '{near[0]}'?"
                if near
                else f"valid keys: {', '.join(sorted(accepted - set(skip))) or 'none'}"
            )
            raise ConfigError(
                source,
                f"{key}.{name}",
                f"{getattr(fn, '__qualname__', fn)} takes no argument '{name}'",
                fix,
            )
