"""The Job base class users subclass, and the error raised for attributes that cannot travel."""
from __future__ import annotations

import inspect
import re
from typing import TYPE_CHECKING, Any, ClassVar

from core.errors import FrameworkError, InvalidQueueName
from core.payload import Payload, from_json_value, new_id, now, to_json_value

if TYPE_CHECKING:
    from core.dispatch import PendingDispatch

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")
# Not job data: the id and attempt count, and the settings that travel in the payload's own fields.
_NOT_SERIALIZED = {"job_id", "attempts", "max_tries", "timeout", "retry_after", "queue", "connection"}


class SerializationError(FrameworkError, TypeError):
    """An attribute value of a job cannot be put in its payload."""


def validate_queue_name(name: Any) -> str:
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise InvalidQueueName(f"invalid queue name {name!r}: use 1-100 letters, digits, '-', '_', '.' or ':'")
    return name


class Job:
    max_tries: ClassVar[int] = 3
    timeout: ClassVar[float] = 60
    retry_after: ClassVar[float | list[float]] = 0
    queue: ClassVar[str] = "default"
    connection: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.attempts: int = 0

    async def handle(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define handle()")

    async def failed(self, exception: BaseException) -> None:
        """Called once, when the job's tries are exhausted. Override to clean up or alert."""

    # -- dispatching ---------------------------------------------------------------------

    @classmethod
    def dispatch(cls, **attributes: Any) -> "PendingDispatch":
        """Build the job from keyword attributes; awaiting the result pushes it and returns its id."""
        from core.dispatch import PendingDispatch

        return PendingDispatch(cls.make(**attributes))

    @classmethod
    async def dispatch_many(cls, items: list[dict[str, Any]], *, queue: str | None = None,
                            connection: str | None = None) -> list[str]:
        """Push one job per dict of attributes in a single round trip; returns their ids."""
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
            if name.startswith("_") or name in ("job_id", "attempts"):
                raise SerializationError(f"{cls.__name__}: {name!r} cannot be set at dispatch")
            setattr(job, name, value)
        return job

    # -- payload ---------------------------------------------------------------------------

    @classmethod
    def class_path(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    def serialize(self) -> dict[str, Any]:
        data = {}
        for name, value in vars(self).items():
            if name.startswith("_") or name in _NOT_SERIALIZED:
                continue
            try:
                data[name] = to_json_value(value, name)
            except TypeError as exc:
                raise SerializationError(f"{type(self).__name__}.{name} cannot be serialized: {exc}") from None
        return data

    def to_payload(self, queue: str | None = None) -> Payload:
        """The payload, freezing this job's settings (the class's, unless set on the instance).
        A job without an id gets one here, kept for every later attempt."""
        self.job_id = self.job_id or new_id()
        retry = self.retry_after
        retry = tuple(map(float, retry)) if isinstance(retry, (list, tuple)) else (float(retry),)
        return Payload(uuid=self.job_id, job=type(self).class_path(),
                       queue=validate_queue_name(self.queue if queue is None else queue),
                       max_tries=int(self.max_tries), timeout=float(self.timeout),
                       retry_after=retry, data=self.serialize(), pushed_at=now())

    @classmethod
    def from_payload(cls, payload: Payload, attempts: int) -> "Job":
        job = cls()
        for name, value in payload.data.items():
            if not name.startswith("_") and name not in _NOT_SERIALIZED:
                setattr(job, name, from_json_value(value))
        job.job_id = payload.uuid
        job.attempts = attempts
        return job

    async def run_handle(self) -> Any:
        result = self.handle()
        return await result if inspect.isawaitable(result) else result

    async def run_failed(self, exception: BaseException) -> None:
        result = self.failed(exception)
        if inspect.isawaitable(result):
            await result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.job_id or 'undispatched'}>"
