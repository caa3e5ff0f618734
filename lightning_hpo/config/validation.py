"""Type checks the config readers share. YAML's ``true`` is a Python ``bool``, which is an
``int``: every integer or number check must refuse it explicitly."""

from __future__ import annotations

import types
import typing
from typing import Any


def is_int(value: Any) -> bool:
    """An integer, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fits_annotation(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``hint``; None when the hint is not one of the
    plain kinds a YAML value can be (a class such as ``timedelta``: left to the code)."""
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        answers = [fits_annotation(value, h) for h in typing.get_args(hint)]
        return True if any(answers) else (None if None in answers else False)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    return None
