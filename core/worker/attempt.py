"""One attempt at a reserved job: decode its payload, resolve its class, check it may run (limits.py),
run its middleware pipeline and handle() under its timeout, and say how it ended (an Outcome): what
the job or a middleware intended (release, delete, fail), else done, or a failed try. It stores
nothing: settle.py does."""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import pkgutil
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.job import Intent, Job, intent_of, resolve_job_class
from core.log import info, one_line
from core.options import DEFAULT_MAX_RELEASES, exception_matches
from core.payload import Payload, peek_uuid, restore_middleware
from core.pipeline import run_pipeline
from core.queue.contract import QueueConnection, ReservedJob
from core.queue.middleware.context import AttemptContext, enter, leave
from core.worker.limits import TooManyReleases, Tries, refusal, tries
from core.worker.options import WorkerOptions
from core.worker.outcome import DONE, Delete, Done, Fail, Outcome, Release, Retry, first_line
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


@dataclass(slots=True, eq=False)
class Attempt:
    """A reserved job being worked on, and what settling its outcome needs to know. Never changed once
    made but for `started`, taken again once JobProcessing's listeners were heard (not frozen: one is
    made per job, and a frozen __init__ costs three times a plain one's)."""
    reserved: ReservedJob
    slot: int                      # the job's key in Worker._running
    started: float                 # time.monotonic() when the worker took it up (after JobProcessing was heard)
    label: str                     # "DisplayName [uuid]" in log lines
    job: Job | None = None         # None: the payload could not be turned back into a job
    payload: Payload | None = None
    max_tries: int = 0
    timeout: float = 0
    tries: Tries | None = None     # failed tries used and allowed (limits.py)
    middleware: tuple[Any, ...] = ()   # the chain around handle(): configured, job.middleware(), .through()


def invoke(job: Job) -> Coroutine[Any, Any, object]:
    """The one call of a job's handle(), at the end of its middleware pipeline."""
    return job.run_handle()


def unloaded_label(reserved: ReservedJob) -> str:
    """The log label of a job whose payload did not load: the class and id it claims (unverified,
    each made one printable line), as queue:failed will list them, else its row id and queue."""
    job_id = peek_uuid(reserved.payload)
    try:
        claimed = json.loads(reserved.payload).get("job")
    except (ValueError, TypeError, AttributeError, RecursionError):
        claimed = None
    if job_id and isinstance(claimed, str) and claimed.strip():
        return f"{one_line(claimed.rsplit('.', 1)[-1], 80)} [{job_id}]"
    return f"job {one_line(reserved.id)} on {reserved.queue}"


class Attempts:
    """Turns a reserved job into an Attempt and runs it.

    Each attempt runs in an AttemptContext (the middleware's view of the store and reservation);
    the contexts whose code is still running are kept here, so the heartbeat renews their locks
    (`held_locks`, from its thread) until that code has really ended, even left behind.
    """

    def __init__(self, config: "Config", options: WorkerOptions, timeouts: Timeouts,
                 long_timeouts: LongTimeouts) -> None:
        self.key = config.app.key
        self.max_payload = config.queue.max_payload_bytes
        self.packages = config.app.job_packages
        self.configured = tuple(config.queue.middleware)     # config/queue.py, around every job
        self.visibility_timeout = config.queue.visibility_timeout
        self.options = options
        self.timeouts = timeouts
        self.long_timeouts = long_timeouts
        self.conn: QueueConnection | None = None            # set by the worker once it is open (bind)
        self._classes: dict[str, type[Job]] = {}    # class paths already checked and imported
        self._contexts: dict[int, AttemptContext] = {}    # by id(): contexts are not hashable
        self._contexts_lock = threading.Lock()      # the heartbeat's thread reads them

    def bind(self, conn: QueueConnection) -> None:
        self.conn = conn

    def begin(self, reserved: ReservedJob, slot: int) -> tuple[Attempt, Outcome | None]:
        """The attempt, and its outcome already when handle() must not run (None: run it)."""
        started = time.monotonic()
        try:
            payload = Payload.decode(reserved.payload, self.key, self.max_payload)
            cls = self._classes.get(payload.job) or self._job_class(payload.job)
            job = cls.from_payload(payload, reserved.attempts)
            through = tuple(restore_middleware(payload, self.packages)) if payload.options else ()
        except Exception as exc:  # InvalidPayload, or a job class whose __init__ raises
            return Attempt(reserved, slot, started, unloaded_label(reserved)), Fail(exc)
        o = self.options
        max_tries = payload.max_tries if o.tries is None else o.tries
        timeout = payload.timeout if o.timeout is None else o.timeout
        # Without options (the common case) no limit of SPEC 9 but max_tries and the default
        # max_releases applies: judged here without building what the options need.
        plain = not payload.options
        used = reserved.attempts - reserved.releases
        tried = Tries(used, max_tries) if plain else tries(reserved, payload, max_tries)
        attempt = Attempt(reserved, slot, started, f"{payload.display_name} [{payload.uuid}]", job, payload,
                          max_tries, timeout, tried, through)
        if timeout > self.long_timeouts.max_timeout:
            self.long_timeouts.check(payload.job, timeout)
        if (plain and reserved.failing is None and used <= max_tries
                and reserved.releases <= DEFAULT_MAX_RELEASES):
            return attempt, None
        return attempt, self._refusal(attempt, payload)

    async def run(self, attempt: Attempt, settle: Callable[[Attempt, Outcome], Coroutine[Any, Any, None]]) -> Outcome:
        """Run the pipeline and handle() under the attempt's timeout. If the code ignores cancellation,
        the attempt's outcome goes to `settle` from a task of its own, and this call raises CancelledError."""
        label, timeout, reserved, tried = attempt.label, attempt.timeout, attempt.reserved, attempt.tries
        if reserved.releases == 0 and tried.limit is not None:     # type: ignore[union-attr]
            info(log, f"RUNNING {label} attempt {reserved.attempts}/{tried.limit}")   # type: ignore[union-attr]
        else:
            info(log, f"RUNNING {label} {tried.describe(reserved)}")   # type: ignore[union-attr]
        job: Job = attempt.job      # type: ignore[assignment]
        chain = None
        if type(job).middleware is not Job.middleware or self.configured or attempt.middleware:
            try:
                chain = self._chain(attempt)
            except Exception as exc:      # a middleware() that does not return a list: a failed try
                return self.outcome_of(attempt, exc)
        code = job.run_handle if chain is None else (lambda: run_pipeline(chain, job, invoke))
        context = AttemptContext(self.conn, reserved, self.visibility_timeout,  # type: ignore[arg-type]
                                 on_lock=self._keep)
        token = enter(context)
        try:
            result = await self.timeouts.run_limited(
                code, timeout, f"{label} exceeded its timeout of {timeout:g}s", label,
                attempt.slot, lambda exc: settle(attempt, self.outcome_of(attempt, exc)))
        except Exception as exc:
            return self.outcome_of(attempt, exc)
        finally:     # the job's code has ended (here, or long after its attempt if it was left behind)
            if context.locks:     # a shielded task costs a loop pass: only for locks to free
                await asyncio.shield(self._end(context))
            elif self._contexts and id(context) in self._contexts:     # it held locks, all freed already
                self._forget(context)
            leave(token)
        return self.finished(attempt, result)

    def _chain(self, attempt: Attempt) -> list[Any] | None:
        """The middleware around handle(): configured, job.middleware(), .through(); None without any.
        run() asks only when one of the three may be there (the common case pays for no call)."""
        job: Job = attempt.job      # type: ignore[assignment]
        own = job.middleware()
        if not isinstance(own, (list, tuple)):
            raise TypeError(f"{type(job).__name__}.middleware() must return a list, got {type(own).__name__}")
        if not (own or self.configured or attempt.middleware):
            return None
        return [*self.configured, *own, *attempt.middleware]

    # -- how the attempt ended ----------------------------------------------------------------

    def finished(self, attempt: Attempt, result: object) -> Outcome:
        """The pipeline returned: what the job or a middleware intended, else done."""
        intent: Intent | None = attempt.job.__dict__.get("_intent")     # intent_of(), inlined: once per job
        if intent is None:
            return DONE if result is None else Done(result)
        if intent.kind == "release":
            return self._released(attempt, intent)
        if intent.kind == "delete":
            return Delete("skipped")
        if intent.kind == "fail":
            return Fail(intent.exception)   # type: ignore[arg-type]
        exc = intent.exception or RuntimeError(f"a middleware of {attempt.label} asked for a retry")
        return self._failed_try(attempt, exc, intent.delay)   # type: ignore[arg-type]

    @staticmethod
    def _released(attempt: Attempt, intent: Intent) -> Release | Fail:
        """A release, or (SPEC 9: releases are bounded by max_releases) the failure its next reservation
        would meet: the release past the limit is not stored, so the job does not wait out its delay
        (an hour for release(3600)) only to fail then."""
        payload, releases = attempt.payload, attempt.reserved.releases + 1
        if payload is not None and releases > payload.max_releases:
            return Fail(TooManyReleases(f"{payload.display_name} ({payload.uuid}) was released {releases} times, over "
                                        f"its max_releases of {payload.max_releases}; it was not run again"))
        return Release(intent.delay, "release" if intent.by == "job" else "middleware")

    def outcome_of(self, attempt: Attempt, exc: Exception) -> Retry | Fail | Delete:
        """An attempt that raised, timed out or was interrupted. A fail() or delete() recorded before
        stands; an exception `dont_retry` names fails at once; else a failed try, retried while tries
        are left (after a release() or a middleware's backoff: after that delay)."""
        if isinstance(exc, JobInterrupted):     # cut short by Ctrl-C twice: back on the queue at once
            return Retry(0, exc)
        intent: Intent | None = intent_of(attempt.job) if attempt.job is not None else None
        if intent is not None and intent.kind == "fail":
            return Fail(intent.exception)   # type: ignore[arg-type]
        if intent is not None and intent.kind == "delete":
            return Delete("skipped")
        if exception_matches(exc, attempt.payload.dont_retry):   # type: ignore[union-attr]
            return Fail(exc)
        return self._failed_try(attempt, exc, None if intent is None else intent.delay)

    def _failed_try(self, attempt: Attempt, exc: Exception, delay: float | None) -> Retry | Fail:
        tried = attempt.tries
        if tried is None or not tried.left:
            return Fail(exc)
        if delay is None:      # the n-th failed try is followed by the n-th delay, whatever the releases
            delay = attempt.payload.retry_delay(tried.used)   # type: ignore[union-attr]
        return Retry(delay, exc)

    def _refusal(self, attempt: Attempt, payload: Payload) -> Fail | Delete | None:
        """A job handle() must not run for again: one a worker began failing, one past its tries
        (its last attempt never finished), or one its limits rule out (limits.refusal)."""
        reserved, tried = attempt.reserved, attempt.tries
        if reserved.failing is not None:     # a worker began failing it: finish that, never run it again
            return Fail(RecordedFailure(reserved.failing))
        if tried is not None and tried.over:
            return Fail(MaxAttemptsExceededError(
                f"{payload.display_name} ({payload.uuid}) reached try {tried.used} of {tried.limit} (attempt "
                f"{reserved.attempts}, {reserved.releases} releases): its last attempt never finished (a worker "
                f"died or was stopped while running it, or the reservation never reached a worker); it was not "
                f"run again"))
        return refusal(reserved, payload)

    # -- the contexts of running code, and their locks ----------------------------------------

    def _keep(self, context: AttemptContext) -> None:
        """The attempt took its first lock: the heartbeat renews its locks until its code has ended.
        Only the worker's loop changes _contexts (the heartbeat's thread copies it under the lock)."""
        with self._contexts_lock:
            self._contexts[id(context)] = context

    def _forget(self, context: AttemptContext) -> None:
        with self._contexts_lock:
            self._contexts.pop(id(context), None)

    async def _end(self, context: AttemptContext) -> None:
        """The attempt's code has ended: free what locks it still holds, and stop renewing them."""
        try:
            await context.release_locks()
        finally:
            self._forget(context)

    def held_locks(self) -> list[tuple[str, str]]:
        """(key, owner) of every lock running job code holds, for the heartbeat to renew; any thread."""
        with self._contexts_lock:
            contexts = list(self._contexts.values())
        return [lock for context in contexts for lock in context.held_locks()]

    async def release_all(self) -> None:
        """The worker exits: free the locks of code still left behind (it ends with the process)."""
        with self._contexts_lock:
            contexts = list(self._contexts.values())
        for context in contexts:
            await self._end(context)

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
        except ImportError as exc:
            # JOB_PACKAGES with a typo: every job of the intended package would fail as outside it.
            log.warning("JOB_PACKAGES names %s, which cannot be imported (%s): no job class is loaded from it",
                        package, first_line(exc))
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
