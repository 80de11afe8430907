"""What an attempt returns: one frozen value per way it can end; settle.py turns it into store calls.

Modelled on Laravel's job that says `release(30)` and a worker that does it: the attempt decides
what happened, and one place (settle.py) stores it.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from core.log import redact


@dataclass(frozen=True)
class Done:
    """handle() returned: acknowledge the job."""
    result: object = None


@dataclass(frozen=True)
class Retry:
    """A failed try with tries left: back on the queue after `delay` seconds."""
    delay: float
    exception: Exception


@dataclass(frozen=True)
class Release:
    """Back on the queue after `delay` seconds without counting as a failed try (the job asked, or a
    middleware did)."""
    delay: float
    reason: str


@dataclass(frozen=True)
class Fail:
    """The job's tries are over, or it can never run: failed() once, then a failed_jobs row."""
    exception: BaseException


@dataclass(frozen=True)
class Delete:
    """Remove the job without running it again and without a failed_jobs row."""
    reason: str


@dataclass(frozen=True)
class Cancelled:
    """Someone cancelled the running job (SPEC 11): remove it, record it cancelled; no retry, no failed()."""


DONE = Done()      # handle() returned None: the common outcome, made once

Outcome = Done | Retry | Release | Fail | Delete | Cancelled


def exception_text(exc: BaseException, secrets: list[str]) -> str:
    """What failed_jobs.exception holds: `Class: message` on the first line, then the traceback."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    message = str(exc).strip()
    trace = "".join(traceback.format_exception(exc))
    return redact(f"{name}: {message}\n\n{trace}" if message else f"{name}\n\n{trace}", secrets)


def first_line(exc: BaseException) -> str:
    """`Class: first line of the message`, for log lines."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
