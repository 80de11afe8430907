"""A job's settings, checked and frozen at dispatch: the payload's fields and its options map.

Each setting is checked where it is given (SPEC 5): a bad one would fail every attempt, or never
run the job, in a worker much later; here it is one line naming the class, and nothing is pushed.
"""
from __future__ import annotations

import math
import operator
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from core import options as opt
from core.errors import FrameworkError
from core.options import Exponential, class_path
from core.payload import middleware_packages, to_json_value, under_packages

if TYPE_CHECKING:
    from core.job import Job


class SerializationError(FrameworkError, TypeError):
    """An attribute value of a job (or of a middleware given to `.through()`) cannot be put in its payload."""


class InvalidJobSetting(FrameworkError, ValueError):
    """A job setting (of the class or set on the instance) that cannot work; nothing was pushed."""


class InvalidPriority(InvalidJobSetting):
    """A priority outside -100..100 (SPEC 11); nothing was pushed."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse(job: "Job", name: str, rule: str, value: Any) -> InvalidJobSetting:
    return InvalidJobSetting(f"{type(job).__name__}.{name} must be {rule}, got {value!r}; nothing was pushed")


def frozen_settings(job: "Job") -> tuple[int, float, tuple[float, ...], dict[str, Any]]:
    """max_tries, timeout, retry_after (a list of delays; empty for an Exponential, which goes in the
    options) and the options map, as the payload holds them."""
    tries, timeout, retry = job.max_tries, job.timeout, job.retry_after
    if not isinstance(tries, int) or isinstance(tries, bool) or tries < 1:
        raise _refuse(job, "max_tries", "a whole number of at least 1", tries)
    if not _number(timeout) or timeout <= 0:
        raise _refuse(job, "timeout", "a finite number of seconds above 0", timeout)
    options = {} if _settings_of(job) == _DEFAULTS else frozen_options(job)   # the common case: one C call
    delays: Sequence[Any] = retry if isinstance(retry, (list, tuple)) else (retry,)
    if not all(_number(d) and d >= 0 for d in delays):
        if isinstance(retry, Exponential):
            options[opt.BACKOFF] = _backoff(job, retry)
            return tries, float(timeout), (), options
        raise _refuse(job, "retry_after", "a finite number of seconds of 0 or more, a list of them, "
                      "or an Exponential", retry)
    return tries, float(timeout), tuple(map(float, delays)), options


def _backoff(job: "Job", retry: Exponential) -> list[float]:
    problem = retry.problem()
    if problem:
        raise _refuse(job, "retry_after", f"a usable Exponential ({problem})", retry)
    return retry.frozen()


# -- the options map: each freezer returns the JSON value to keep, or None for the default -------

def _seconds(job: "Job", name: str, value: Any) -> float | None:
    """A duration: seconds or a timedelta, above 0 (None: not set)."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if value is None:
        return None
    if not _number(seconds) or seconds <= 0:
        raise _refuse(job, name, "a number of seconds above 0, a timedelta, or None", value)
    return float(seconds)


def _deadline(job: "Job", name: str, value: Any) -> float | None:
    """retry_until: a duration from the moment the job is due (its dispatch plus its delay), or a
    datetime turned into one now (a naive datetime is local time, as for `.delay()`; a delayed
    dispatch takes its delay off: due_deadline)."""
    if not isinstance(value, datetime):
        return _seconds(job, name, value)
    seconds = value.timestamp() - time.time()
    if seconds <= 0:
        raise _refuse(job, name, "in the future when given as a datetime", value)
    return seconds


def due_deadline(job: "Job", seconds: float, delay: float) -> float:
    """A datetime retry_until, frozen as seconds from now, as seconds from the delayed job's due time."""
    if seconds - delay <= 0:
        raise _refuse(job, "retry_until", f"after the job is due (it is delayed {delay:g}s)", job.retry_until)
    return seconds - delay


def _whole(least: int, default: int | None) -> Callable[["Job", str, Any], int | None]:
    def freeze(job: "Job", name: str, value: Any) -> int | None:
        if value is None and default is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            optional = ", or None" if default is None else ""
            raise _refuse(job, name, f"a whole number of at least {least}{optional}", value)
        return None if value == default else value
    return freeze


def _flag(job: "Job", name: str, value: Any) -> bool | None:
    if not isinstance(value, bool):
        raise _refuse(job, name, "True or False", value)
    return value or None


def _exceptions(job: "Job", name: str, value: Any) -> list[str] | None:
    """dont_retry: exception classes, kept as their class paths (the worker matches on paths)."""
    classes = (value,) if isinstance(value, type) else value
    if not isinstance(classes, (tuple, list)) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise _refuse(job, name, "exception classes (a tuple of them)", value)
    return [class_path(c) for c in classes] or None


def _keep(job: "Job", name: str, value: Any) -> float | None:
    """keep_result: seconds, 0 (the default) keeps nothing."""
    if not _number(value) or value < 0:
        raise _refuse(job, name, "a number of seconds of 0 or more", value)
    return float(value) or None


def _priority(job: "Job", name: str, value: Any) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value not in opt.PRIORITY_RANGE:
        raise InvalidPriority(f"{type(job).__name__}.priority must be a whole number from -100 to 100 (higher runs "
                              f"first), got {value!r}; nothing was pushed")
    return value or None


# (attribute, option key, the Job default, freezer); a value that *is* the default costs one check.
_FREEZERS: tuple[tuple[str, str, Any, Callable[["Job", str, Any], Any]], ...] = (
    ("retry_until", opt.RETRY_UNTIL, None, _deadline),
    ("max_exceptions", opt.MAX_EXCEPTIONS, None, _whole(1, None)),
    ("max_releases", opt.MAX_RELEASES, opt.DEFAULT_MAX_RELEASES, _whole(0, opt.DEFAULT_MAX_RELEASES)),
    ("expires_after", opt.EXPIRES_AFTER, None, _seconds),
    ("expires_quietly", opt.EXPIRES_QUIETLY, False, _flag),
    ("dont_retry", opt.DONT_RETRY, (), _exceptions),
    ("keep_result", opt.KEEP_RESULT, 0, _keep),
    ("priority", opt.PRIORITY, 0, _priority),
)
SETTING_NAMES = frozenset(name for name, _, _, _ in _FREEZERS)
_settings_of = operator.attrgetter(*(name for name, _, _, _ in _FREEZERS))
_DEFAULTS = tuple(default for _, _, default, _ in _FREEZERS)


def frozen_options(job: "Job") -> dict[str, Any]:
    options = {}
    for name, key, default, freeze in _FREEZERS:
        value = getattr(job, name)
        if value is not default:
            frozen = freeze(job, name, value)
            if frozen is not None:
                options[key] = frozen
    return options


# -- middleware given to .through(): class path + public attributes --------------------------------

def frozen_middleware(job: "Job", middleware: Sequence[Any], job_packages: tuple[str, ...]) -> list[list[Any]]:
    """Each middleware as [class path, {public attribute: JSON value}], refused (SerializationError)
    unless a worker could rebuild it: an instance of a top-level class under core.queue.middleware
    or the job packages, with JSON attributes."""
    where = f"{type(job).__name__}.through()"
    packages = middleware_packages(job_packages)
    return [_frozen_one(where, m, packages) for m in middleware]


def _frozen_one(where: str, middleware: Any, packages: tuple[str, ...]) -> list[Any]:
    from core.job import Job     # here: core.job imports this module

    cls = type(middleware)
    path = class_path(cls)
    callable_ = callable(middleware) or callable(getattr(middleware, "handle", None))
    if isinstance(middleware, (type, Job)) or not callable_:
        raise SerializationError(f"{where}: {middleware!r} is not a middleware object (give an instance "
                                 "with async __call__(job, next))")
    if not (under_packages(cls.__module__, packages) and getattr(sys.modules.get(cls.__module__), cls.__qualname__,
                                                                 None) is cls):
        raise SerializationError(f"{where}: {path} cannot travel in a payload: only instances of classes defined "
                                 f"at the top of a module under {', '.join(packages)} can (a worker imports "
                                 "nothing else)")
    try:
        attributes = vars(middleware)
    except TypeError:
        raise SerializationError(f"{where}: {path} keeps no attributes dict (__slots__?), so it cannot be "
                                 "serialized") from None
    data = {}
    for name, value in attributes.items():
        if name.startswith("_"):
            continue
        try:
            data[name] = to_json_value(value, name)
        except TypeError as exc:
            raise SerializationError(f"{where}: {cls.__name__}.{name} cannot be serialized: {exc}") from None
    return [path, data]
