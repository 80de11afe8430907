"""The Job base class users subclass; its settings are checked and frozen by core/job_settings.py."""
from __future__ import annotations

import inspect
import re
import time
from datetime import datetime, timedelta
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from core.errors import FrameworkError, InvalidQueueName
from core.job_settings import (SETTING_NAMES, InvalidJobSetting, InvalidPriority, SerializationError, _number,
                               due_deadline, frozen_settings)
from core.options import DEFAULT_MAX_RELEASES, MAX_DELAY, MIDDLEWARE, RETRY_UNTIL, Exponential
from core.payload import InvalidPayload, Payload, from_json_value, import_class, new_id, now, to_json_value

if TYPE_CHECKING:
    from core.dispatch import PendingDispatch

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
__all__ = ["Exponential", "InvalidJobSetting", "InvalidPriority", "Job", "SerializationError"]
# Not job data: the id and attempt count, and the settings that travel in the payload's fields and options.
_NOT_SERIALIZED = {"job_id", "attempts", "max_tries", "timeout", "retry_after", "queue", "connection",
                   *SETTING_NAMES}


def _shadowed(cls: type) -> frozenset[str]:
    """Names an attribute set at dispatch would hide: the class's methods, properties and other
    descriptors (`dispatch(handle=...)` would make a job that fails every try). Kept per class."""
    names = _SHADOWED.get(cls)
    if names is None:
        names = _SHADOWED[cls] = frozenset(
            name for name in dir(cls) if not name.startswith("_") and _is_behaviour(inspect.getattr_static(cls, name)))
    return names


def _is_behaviour(value: Any) -> bool:
    return callable(value) or hasattr(type(value), "__get__") or isinstance(value, (staticmethod, classmethod))


_SHADOWED: dict[type, frozenset[str]] = {}


def _check_name(cls: type, name: str) -> str | None:
    """Why `name` cannot be a job attribute set at dispatch or restored from a payload, else None."""
    if name in ("job_id", "attempts"):
        return "is the framework's own"
    if name.startswith("_"):
        return "is private (a name starting with '_' is never serialized)"
    if name in _shadowed(cls):
        return f"would hide {cls.__name__}.{name}, which is not data (a method, property or descriptor)"
    return None


def validate_queue_name(name: Any) -> str:
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise InvalidQueueName(f"invalid queue name {name!r}: use 1-100 letters, digits, '-', '_', '.' or ':'")
    return name


class Job:
    max_tries: ClassVar[int] = 3
    timeout: ClassVar[float] = 60
    retry_after: ClassVar[float | list[float] | Exponential] = 0
    queue: ClassVar[str] = "default"
    connection: ClassVar[str | None] = None
    # SPEC 9, frozen in the payload's options map when they differ from these defaults:
    retry_until: ClassVar[float | timedelta | datetime | None] = None   # seconds after dispatch, or when
    max_exceptions: ClassVar[int | None] = None         # failed attempts allowed (with retry_until)
    max_releases: ClassVar[int] = DEFAULT_MAX_RELEASES  # releases before TooManyReleases
    expires_after: ClassVar[float | timedelta | None] = None   # seconds after being due it may still start
    expires_quietly: ClassVar[bool] = False             # an expired job is deleted (SKIP), not failed
    dont_retry: ClassVar[tuple[type[BaseException], ...]] = ()   # these exceptions fail the job at once
    # SPEC 11, frozen in the options map when not the default:
    keep_result: ClassVar[float] = 0      # seconds the completed job's record (state, return value) is kept
    priority: ClassVar[int] = 0           # -100..100, higher runs first within a queue

    _restored: bool     # set (True) on a job restored from a payload by a worker; see dispatched_as

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.attempts: int = 0

    async def handle(self) -> Any:
        """The job's work. What it returns is kept when keep_result > 0 (SPEC 11)."""
        raise NotImplementedError(f"{type(self).__name__} must define handle()")

    async def failed(self, exception: BaseException) -> None:
        """Called once, when the job's tries are exhausted. Override to clean up or alert."""

    def middleware(self) -> list[Any]:
        """Middleware around handle(), built in the worker from the restored job: objects with
        `async def __call__(self, job, next)`. Override to add some."""
        return []

    # -- dispatching ---------------------------------------------------------------------

    @classmethod
    def dispatch(cls, **attributes: Any) -> "PendingDispatch":
        """Build the job from keyword attributes; awaiting the result pushes it and returns its id."""
        from core.dispatch import PendingDispatch

        return PendingDispatch(cls.make(**attributes))

    @classmethod
    async def dispatch_many(cls, items: list[dict[str, Any]], *, queue: str | None = None,
                            connection: str | None = None) -> list[Any]:
        """Push one job per dict of attributes in a single round trip; returns their JobRefs (ids)."""
        from core.dispatch import dispatch_many

        return await dispatch_many([cls.make(**attrs) for attrs in items], queue=queue, connection=connection)

    @classmethod
    async def dispatch_sync(cls, **attributes: Any) -> Any:
        """Run the job now, in this process, without a queue; failed() runs if it raises."""
        from core.dispatch import run_now

        return await run_now(cls.make(**attributes))

    @classmethod
    def make(cls, **attributes: Any) -> "Job":
        job = cls()
        for name, value in attributes.items():
            why = _check_name(cls, name)
            if why:
                raise SerializationError(f"{cls.__name__}: {name!r} cannot be set at dispatch: it {why}")
            setattr(job, name, value)
        return job

    # -- payload ---------------------------------------------------------------------------

    @classmethod
    def class_path(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    def serialize(self) -> dict[str, Any]:
        data = {}
        shadowed = _shadowed(type(self))
        for name, value in vars(self).items():
            if name.startswith("_") or name in _NOT_SERIALIZED:
                continue
            if name in shadowed:     # set on an instance built by hand
                raise SerializationError(f"{type(self).__name__}: {name!r} cannot be dispatched: it "
                                         f"{_check_name(type(self), name)}")
            try:
                data[name] = to_json_value(value, name)
            except TypeError as exc:
                raise SerializationError(f"{type(self).__name__}.{name} cannot be serialized: {exc}") from None
        return data

    def to_payload(self, queue: str | None = None, middleware: list[list[Any]] | None = None,
                   delay: float = 0.0) -> Payload:
        """The payload of a new job: a fresh id (every dispatch is a new job, SPEC 5; only its own
        retry after a lost answer reuses it, by pushing this same payload), and this job's
        settings (the class's, unless set on the instance) checked and frozen, with the
        `.through()` middleware already frozen by job_settings.frozen_middleware."""
        tries, timeout, retry, options = frozen_settings(self)
        if delay and RETRY_UNTIL in options and isinstance(self.retry_until, datetime):
            options[RETRY_UNTIL] = due_deadline(self, options[RETRY_UNTIL], delay)
        if middleware:
            options[MIDDLEWARE] = middleware
        return Payload(uuid=new_id(), job=type(self).class_path(),
                       queue=validate_queue_name(self.queue if queue is None else queue),
                       max_tries=tries, timeout=timeout, retry_after=retry, data=self.serialize(), pushed_at=now(),
                       options=options)

    def dispatched_as(self, payload: Payload) -> None:
        """Note a dispatch of this instance: one built by hand takes its latest dispatch's id; one a
        worker restored from a payload (running now) keeps its own, whatever copies of it it pushes."""
        if not self.__dict__.get("_restored"):
            self.job_id = payload.uuid

    @classmethod
    def from_payload(cls, payload: Payload, attempts: int) -> "Job":
        job = cls()
        for name, value in payload.data.items():
            if name.startswith("_") or name in _NOT_SERIALIZED:
                continue
            if name in _shadowed(cls):   # a payload from before the check, or forged: it would fail every try
                raise InvalidPayload(f"payload attribute {name[:80]!r} of {cls.__name__} cannot be restored: "
                                     f"it {_check_name(cls, name)}")
            setattr(job, name, from_json_value(value))
        job.job_id = payload.uuid
        job.attempts = attempts
        job._restored = True
        return job

    async def run_handle(self) -> Any:
        result = self.handle()
        return await result if inspect.isawaitable(result) else result

    async def run_failed(self, exception: BaseException) -> None:
        result = self.failed(exception)
        if inspect.isawaitable(result):
            await result

    # -- control from inside a job (SPEC 9) --------------------------------------------------

    async def publish(self, topic: str, payload: Any = None, qos: int = 1, retain: bool = False) -> None:
        """Publish an MQTT message from handle() (SPEC 18): dicts and lists go as JSON. One connection per
        process, opened on first use; with qos 1 or 2 this returns once the broker has the message.
        A broker that cannot be reached raises ConnectionFailed: the try fails and its retry publishes again."""
        from core.context import current

        await current().mqtt.publish(topic, payload, qos=qos, retain=retain)

    async def progress(self, fraction: float, text: str = "") -> bool:
        """Record how far the running job got (0..1, and a word), shown by status and queue:status;
        False outside a worker's attempt or when the reservation was lost (SPEC 11)."""
        from core.queue.middleware.context import _current

        if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction <= 1):
            raise ValueError(f"{type(self).__name__}.progress() takes a fraction from 0 to 1, got {fraction!r}")
        attempt = _current.get()
        if attempt is None:
            return False
        return await attempt.connection.set_progress(attempt.reserved, float(fraction), str(text))

    def release(self, delay: float | timedelta | datetime = 0) -> None:
        """When handle() returns, put the job back to run again after `delay` (seconds, a timedelta, or
        a datetime, as `.delay()` takes): a release, not a failed try (bounded by max_releases and
        retry_until)."""
        if isinstance(delay, timedelta):
            delay = max(0.0, delay.total_seconds())
        elif isinstance(delay, datetime):
            delay = max(0.0, delay.timestamp() - time.time())     # a naive datetime is local time
        intend(self, "release", delay=delay, by="job")

    def delete(self) -> None:
        """When handle() returns, remove the job without success (state `skipped`)."""
        intend(self, "delete", by="job")

    def fail(self, exc: BaseException | str | None = None) -> None:
        """When handle() returns, fail the job now, no retry: failed() runs once and the job is
        written to failed_jobs with `exc` (a message becomes ManuallyFailed)."""
        intend(self, "fail", exception=exc, by="job")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.job_id or 'undispatched'}>"


def resolve_job_class(path: str, packages: tuple[str, ...]) -> type[Job]:
    """The Job subclass a payload names, imported only from the job packages (SPEC 8)."""
    return import_class(path, packages, Job)


# -- intents: what happens to a job when handle() returns (SPEC 9) ---------------------------

INTENT_KINDS = ("release", "delete", "fail", "retry")


class ManuallyFailed(FrameworkError, RuntimeError):
    """The exception of a job failed by `self.fail()` (or `self.fail("why")`) without one of its own."""


@dataclass(frozen=True)
class Intent:
    """What the worker does with a job once its pipeline returns, whatever handle() returned.

    kind: "release" (again after `delay`, not a failed try), "delete" (skipped), "fail" (now, with
    `exception`, no retry), or "retry" (a failed try retried after `delay`: a middleware's backoff
    for the exception passing through it). `by`: "job" (self.release() ...) or "middleware".
    """
    kind: str
    delay: float = 0.0
    exception: BaseException | None = None
    by: str = "job"


def intent_of(job: Job) -> Intent | None:
    return job.__dict__.get("_intent")


def intend(job: Job, kind: str, delay: float = 0, exception: BaseException | str | None = None,
           by: str = "middleware") -> Intent:
    """Record what happens to `job` when its pipeline returns. The first intent wins: a second raises
    RuntimeError, except over a "retry" (only a hint how to retry a failed try: any decision replaces it)."""
    if kind not in INTENT_KINDS or by not in ("job", "middleware"):
        raise ValueError(f"an intent is one of {', '.join(INTENT_KINDS)}, by job or middleware; got {kind!r} by {by!r}")
    if not _number(delay) or not 0 <= delay <= MAX_DELAY:
        raise ValueError(f"{type(job).__name__}.{kind}() delay must be a finite number of seconds from 0 to "
                         f"{MAX_DELAY} (50 years), got {delay!r}")
    recorded = intent_of(job)
    if recorded is not None and recorded.kind != "retry":
        raise RuntimeError(f"{type(job).__name__} already chose to {recorded.kind} (by {recorded.by}); only the "
                           "first of release(), delete() and fail() counts")
    if exception is not None and not isinstance(exception, (BaseException, str)):
        raise TypeError(f"{type(job).__name__}.{kind}() takes an exception or a message, got {exception!r}")
    if isinstance(exception, str) or (exception is None and kind == "fail"):
        exception = ManuallyFailed(exception or f"{type(job).__name__} was failed by its {by}")
    timed = kind in ("release", "retry")
    intent = Intent(kind, float(delay) if timed else 0.0, exception if kind in ("fail", "retry") else None, by)
    job.__dict__["_intent"] = intent
    return intent
