"""The payload's signed `options` map: job settings frozen at dispatch beyond the payload's first fields.

Only settings that differ from their defaults are written, so a job that uses none carries no map
and its payload is, byte for byte, what it was before the map existed; a new setting is a new key
here, not a new field of the codec. Keys are checked one by one when a payload is decoded; an
unknown key is refused, since a worker that ignored a setting would run the job against it.
"""
from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

BACKOFF = "backoff"                  # [first, factor, max, jitter]: retry_after = Exponential(...)
RETRY_UNTIL = "retryUntil"           # seconds after the push
MAX_EXCEPTIONS = "maxExceptions"
MAX_RELEASES = "maxReleases"
EXPIRES_AFTER = "expiresAfter"       # seconds after the job is due
EXPIRES_QUIETLY = "expiresQuietly"
DONT_RETRY = "dontRetry"             # exception class paths
MIDDLEWARE = "middleware"            # [[class path, {public attribute: JSON value}], ...] from .through()
KEEP_RESULT = "keepResult"           # SPEC 11: seconds the completed job's record is kept
PRIORITY = "priority"                # SPEC 11: -100..100, higher runs first

PRIORITY_RANGE = range(-100, 101)

DEFAULT_MAX_RELEASES = 100
MIDDLEWARE_PACKAGE = "core.queue.middleware"   # besides JOB_PACKAGES, the only home of middleware a payload names
_PATH = re.compile(r"[A-Za-z_][\w.<>]{0,254}", re.ASCII)   # <locals> may appear in an exception's path


@dataclass(frozen=True)
class Exponential:
    """retry_after = Exponential(first=5, factor=2, max=600, jitter=0.2): the delay before retry n is
    min(max, first * factor**(n-1)), then moved by up to +-jitter of itself at random."""

    first: float
    factor: float = 2
    max: float = 3600
    jitter: float = 0

    def delay(self, n: int, rand: Callable[[], float] = random.random) -> float:
        try:
            base = min(self.max, self.first * float(self.factor) ** (max(n, 1) - 1))
        except OverflowError:       # factor**n past a float: the cap was reached long before
            base = self.max
        return float(base) if not self.jitter else base * (1 + self.jitter * (2 * rand() - 1))

    def problem(self) -> str | None:
        """What makes these numbers unusable, else None."""
        numbers = (self.first, self.factor, self.max, self.jitter)
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) for n in numbers):
            return "needs finite numbers"
        if self.first < 0 or self.factor < 1 or self.max < self.first or not 0 <= self.jitter < 1:
            return "needs first >= 0, factor >= 1, max >= first and 0 <= jitter < 1"
        return None

    def frozen(self) -> list[float]:
        return [float(self.first), float(self.factor), float(self.max), float(self.jitter)]


def exception_matches(exception: BaseException, paths: Iterable[str]) -> bool:
    """Whether the exception is one of the classes named (a subclass counts), judged on the class
    paths of its MRO: nothing named in a payload is ever imported to answer."""
    wanted = paths if isinstance(paths, (set, frozenset)) else frozenset(paths)
    return bool(wanted) and any(class_path(c) in wanted for c in type(exception).__mro__)


# The longest delay a dispatch or a release may ask for: every store can hold its due time (MySQL's
# columns are unsigned 32-bit seconds, until 2106), and a larger one is a mistake, not a plan.
MAX_DELAY = 50 * 365 * 86400


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- decoding: each key's check returns the value the accessors read, or raises ValueError ----------

def _describe(value: Any) -> str:
    if value is None or isinstance(value, (str, int, float)):
        text = repr(value)
        return f"{type(value).__name__} {text if len(text) <= 40 else text[:40] + '...'}"
    return type(value).__name__


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _seconds(value: Any) -> float:
    if not (_number(value) and value > 0):
        raise ValueError(f"must be seconds above 0, got {_describe(value)}")
    return float(value)


def _whole(least: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if type(value) is not int or value < least:
            raise ValueError(f"must be a whole number of at least {least}, got {_describe(value)}")
        return value
    return check


def _true(value: Any) -> bool:
    if value is not True:       # False is the default, so it is never written
        raise ValueError(f"must be true, got {_describe(value)}")
    return True


def _backoff(value: Any) -> list[float]:
    if not (type(value) is list and len(value) == 4 and all(map(_number, value))
            and Exponential(*value).problem() is None):
        raise ValueError("must be [first, factor, max, jitter] with first >= 0, factor >= 1, max >= first "
                         f"and 0 <= jitter < 1, got {_describe(value)}")
    return [float(v) for v in value]


def _paths(value: Any) -> list[str]:
    if not (type(value) is list and value and all(type(p) is str and _PATH.fullmatch(p) for p in value)):
        raise ValueError(f"must be a list of class paths, got {_describe(value)}")
    return value


def _priority(value: Any) -> int:
    if type(value) is not int or value not in PRIORITY_RANGE or value == 0:
        raise ValueError(f"must be a whole number in -100..100 other than 0, got {_describe(value)}")
    return value


def _middleware(value: Any) -> list[list[Any]]:
    if not (type(value) is list and value and all(
            type(m) is list and len(m) == 2 and type(m[0]) is str and type(m[1]) is dict for m in value)):
        raise ValueError(f"must be a list of [class path, attributes] pairs, got {_describe(value)}")
    return value


_CHECKS: dict[str, Callable[[Any], Any]] = {
    BACKOFF: _backoff, RETRY_UNTIL: _seconds, MAX_EXCEPTIONS: _whole(1), MAX_RELEASES: _whole(0),
    EXPIRES_AFTER: _seconds, EXPIRES_QUIETLY: _true, DONT_RETRY: _paths, MIDDLEWARE: _middleware,
    KEEP_RESULT: _seconds, PRIORITY: _priority,
}


def decode_options(value: Any) -> dict[str, Any]:
    """The options of a decoded payload, each key checked; ValueError (one line) for the first bad one."""
    if type(value) is not dict:
        raise ValueError(f"payload field 'options' must be a JSON object, got {_describe(value)}")
    options = {}
    for key, item in value.items():
        check = _CHECKS.get(key)
        if check is None:
            raise ValueError(f"payload option {key[:40]!r} is unknown to this worker; the job was not run")
        try:
            options[key] = check(item)
        except ValueError as exc:
            raise ValueError(f"payload option {key!r} {exc}") from None
    return options
