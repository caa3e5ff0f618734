"""Blame the key: when building a component from its ``*_config`` fails, find the one key it rejected (``optimizer_config.lr``), and turn the failure into a one-line ConfigError."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from lightning_hpo.config.validation import fits_annotation
from lightning_hpo.errors import ConfigError


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or obj.__class__.__qualname__


def _culprit(probe: Callable[[dict[str, Any]], Any], kwargs: dict[str, Any]) -> str | None:
    """The key of ``kwargs`` without which ``probe`` succeeds, if exactly one is to blame."""
    for key in kwargs:
        try:
            probe({k: v for k, v in kwargs.items() if k != key})
        except Exception:  # noqa: BLE001 - still failing: this key is not (alone) to blame
            continue
        return key
    return None


_PLAIN = {t.__name__: t for t in (int, float, str, bool)}


def _mistyped(ctor: Callable, kwargs: dict[str, Any]) -> str | None:
    """The one key whose value is not of the plain type (int, float, str, bool) its parameter
    is annotated with or defaults to, for a required key that cannot simply be left out."""
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        return None
    wrong = []
    for key, value in kwargs.items():
        param = params.get(key)
        if param is None:
            continue
        hint = param.annotation
        expected = _PLAIN.get(hint) if isinstance(hint, str) else hint
        if expected not in _PLAIN.values() and param.default not in (None, param.empty):
            expected = type(param.default)
        if expected not in _PLAIN.values():
            continue
        if fits_annotation(value, expected) is False:
            wrong.append(key)
    return wrong[0] if len(wrong) == 1 else None


def _default(ctor: Callable, name: str) -> Any:
    try:
        param = inspect.signature(ctor).parameters.get(name)
    except (TypeError, ValueError):
        return inspect.Parameter.empty
    return inspect.Parameter.empty if param is None else param.default


def probe_kwargs(
    probe: Callable[[dict[str, Any]], Any],
    kwargs: dict[str, Any],
    source: str,
    group: str,
    ctor: Callable,
    what: str,
) -> Any:
    """``probe(kwargs)`` (build a component from its ``*_config`` and use it once).

    A failure is a ConfigError naming the key it rejected (``optimizer_config.lr``) when the
    probe succeeds without that key, else the whole ``group``.
    """
    try:
        return probe(kwargs)
    except Exception as exc:
        culprit = _culprit(probe, kwargs) or _mistyped(ctor, kwargs)
        name = _name(ctor)
        if culprit is None:
            raise ConfigError(
                source, group, f"{what} failed with {kwargs!r} ({_first_line(exc)})", f"fix {group}"
            ) from exc
        default = _default(ctor, culprit)
        hint = "" if default is inspect.Parameter.empty else f" (its default is {default!r})"
        raise ConfigError(
            source,
            f"{group}.{culprit}",
            f"{name} rejected {kwargs[culprit]!r} ({_first_line(exc)})",
            f"give {group}.{culprit} a value {name} accepts{hint}",
        ) from exc


@contextlib.contextmanager
def blame(source: str, key: str | None, what: str, fix: str) -> Iterator[None]:
    """Any exception in the body becomes a ConfigError: ``what`` failed, and why. A ConfigError
    from a builder that does not know the file (``<run config>``) is given ``source``."""
    try:
        yield
    except ConfigError as exc:
        if exc.source != "<run config>":
            raise
        raise exc.with_source(source) from exc
    except Exception as exc:
        raise ConfigError(source, key, f"{what} failed ({_first_line(exc)})", fix) from exc
