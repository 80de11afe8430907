"""Checks of middleware arguments, where they are given: a bad one is one clear error, not a
failure of every attempt in a worker much later."""
from __future__ import annotations

import math
from typing import Any

from core.errors import FrameworkError

MAX_KEY = 200       # the stores' key columns hold 255 characters; prefixes take the rest


class InvalidMiddleware(FrameworkError, ValueError):
    """A job middleware was given an argument it cannot work with."""


def key(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_KEY:
        raise InvalidMiddleware(f"{where}: the key must be a text of 1-{MAX_KEY} characters, got {value!r}")
    return value


def seconds(where: str, name: str, value: Any, *, zero: bool = False) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "above 0"
        raise InvalidMiddleware(f"{where}: {name} must be a finite number of seconds {least}, got {value!r}")
    return float(value)


def count(where: str, name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidMiddleware(f"{where}: {name} must be a whole number of at least 1, got {value!r}")
    return value
