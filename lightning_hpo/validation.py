"""Type checks the config readers share. YAML's ``true`` is a Python ``bool``, which is an
``int``: every integer or number check must refuse it explicitly."""

from __future__ import annotations

from typing import Any


def is_int(value: Any) -> bool:
    """An integer, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
