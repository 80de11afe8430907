"""One attempt at a reserved job: decode its payload, resolve its class, check it may run, run
handle() under its timeout, and say how it ended (an Outcome). It stores nothing: settle.py does."""
from __future__ import annotations

import importlib
import logging
import pkgutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.job import Job, resolve_job_class
from core.log import one_line
from core.payload import Payload
from core.queue.contract import ReservedJob
from core.worker.options import WorkerOptions
from core.worker.outcome import Done, Fail, Outcome, Retry, first_line
from core.worker.timeouts import JobInterrupted, LongTimeouts, Timeouts

if TYPE_CHECKING:
    from core.config import Config

log = logging.getLogger("worker")


class MaxAttemptsExceededError(Exception):
    """A job came back after its last attempt never finished (its worker died or was killed,
    or the answer of the reserve that counted it was lost)."""
    __module__ = "core.worker"    # the name failed_jobs records: where users import it from


class RecordedFailure(Exception):
    """The exception a worker recorded when it began failing the job (mark_failing) and could not finish.

    str() is its first line; `text` the whole record: class, message and traceback."""
    __module__ = "core.worker"

    def __init__(self, text: str) -> None:
        super().__init__((text.splitlines() or [""])[0])
        self.text = text


@dataclass(frozen=True)
class Attempt:
    """A reserved job being worked on, and what settling its outcome needs to know."""
    reserved: ReservedJob
    slot: int                      # the job's key in Worker._running
    started: float                 # time.monotonic() when the worker took it up
    label: str                     # "DisplayName [uuid]" in log lines
    job: Job | None = None         # None: the payload could not be turned back into a job
    payload: Payload | None = None
    max_tries: int = 0
    timeout: float = 0


async def invoke(job: Job) -> object:
    """The one call of a job's handle(). The job middleware pipeline will wrap this function."""
    return await job.run_handle()


class Attempts:
    """Turns a reserved job into an Attempt and runs it."""

    def __init__(self, config: "Config", options: WorkerOptions, timeouts: Timeouts,
                 long_timeouts: LongTimeouts) -> None:
        self.key = config.app.key
        self.max_payload = config.queue.max_payload_bytes
        self.packages = config.app.job_packages
        self.options = options
        self.timeouts = timeouts
        self.long_timeouts = long_timeouts
        self._classes: dict[str, type[Job]] = {}    # class paths already checked and imported

    def begin(self, reserved: ReservedJob, slot: int) -> tuple[Attempt, Outcome | None]:
        """The attempt, and its outcome already when handle() must not run (None: run it)."""
        started = time.monotonic()
        try:
            payload = Payload.decode(reserved.payload, self.key, self.max_payload)
            job = self._job_class(payload.job).from_payload(payload, reserved.attempts)
        except Exception as exc:  # InvalidPayload, or a job class whose __init__ raises
            return Attempt(reserved, slot, started, f"job {one_line(reserved.id)} on {reserved.queue}"), Fail(exc)
        o = self.options
        attempt = Attempt(reserved, slot, started, f"{payload.display_name} [{payload.uuid}]", job, payload,
                          payload.max_tries if o.tries is None else o.tries,
                          payload.timeout if o.timeout is None else o.timeout)
        self.long_timeouts.check(payload.job, attempt.timeout)
        return attempt, self._refusal(attempt, payload)

    async def run(self, attempt: Attempt, settle: Callable[[Attempt, Outcome], Coroutine[Any, Any, None]]) -> Outcome:
        """Run handle() under the attempt's timeout. If the code ignores cancellation, the attempt's
        outcome goes to `settle` from a task of its own, and this call raises CancelledError."""
        label, timeout = attempt.label, attempt.timeout
        log.info("RUNNING %s attempt %d/%d", label, attempt.reserved.attempts, attempt.max_tries)
        try:
            result = await self.timeouts.run_limited(
                lambda: invoke(attempt.job),   # type: ignore[arg-type]
                timeout, f"{label} exceeded its timeout of {timeout:g}s", label, attempt.slot,
                lambda exc: settle(attempt, self.outcome_of(attempt, exc)))
        except Exception as exc:
            return self.outcome_of(attempt, exc)
        return Done(result)

    def outcome_of(self, attempt: Attempt, exc: Exception) -> Retry | Fail:
        """An attempt that raised, timed out or was interrupted: a retry while tries are left."""
        if isinstance(exc, JobInterrupted):     # cut short by Ctrl-C twice: back on the queue at once
            return Retry(0, exc)
        if attempt.reserved.attempts < attempt.max_tries:
            return Retry(attempt.payload.retry_delay(attempt.reserved.attempts), exc)   # type: ignore[union-attr]
        return Fail(exc)

    def _refusal(self, attempt: Attempt, payload: Payload) -> Fail | None:
        """A job handle() must not run for again: one a worker began failing, or one past its tries."""
        reserved = attempt.reserved
        if reserved.failing is not None:     # a worker began failing it: finish that, never run it again
            return Fail(RecordedFailure(reserved.failing))
        if reserved.attempts > attempt.max_tries:
            return Fail(MaxAttemptsExceededError(
                f"{payload.display_name} ({payload.uuid}) reached attempt {reserved.attempts} of "
                f"{attempt.max_tries}: its last attempt never finished (a worker died or was stopped while "
                f"running it, or the reservation never reached a worker); it was not run again"))
        return None

    def _job_class(self, path: str) -> type[Job]:
        cls = self._classes.get(path)
        if cls is None:
            cls = self._classes[path] = resolve_job_class(path, self.packages)
        return cls


def discover_job_classes(packages: tuple[str, ...]) -> list[type[Job]]:
    """Import every module of the job packages and return the Job subclasses defined there."""
    found: list[type[Job]] = []
    for package in packages:
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            continue
        names = [package] + [m.name for m in pkgutil.walk_packages(getattr(pkg, "__path__", []), package + ".")]
        for name in names:
            found += _job_classes_of(name)
    return found


def _job_classes_of(name: str) -> list[type[Job]]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        log.warning("Cannot import job module %s: %s", name, first_line(exc))
        return []
    return [value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, Job) and value is not Job
            and value.__module__ == module.__name__]
