"""The worker's events (SPEC 10): what each outcome reports, built only when someone listens.

settle.py calls these right after a state change is stored (never when the store call failed or
the reservation was lost), loop.py for the worker's start and stop and for JobProcessing. Every
method asks `wants()` first, so with no listener an event costs one dict lookup and is never
built. Listeners are heard from the Announcer's own task (core/events.py), in order: a slow one
holds no job slot, acknowledgement or pass of the loop.
"""
from __future__ import annotations

import json
import time
from collections.abc import Awaitable

from core.events import (Announcer, Event, JobExpired, JobFailed, JobProcessed, JobProcessing,
                         JobReleased, JobTimedOut, WorkerStarting, WorkerStopping, listening, wants)
from core.log import one_line, redact
from core.payload import peek_uuid
from core.worker.attempt import Attempt
from core.worker.timeouts import JobTimeoutError

# The SPEC 9 exception an expired job is failed with (Fail(JobExpired(...))). Matched by name: it
# shares its name with the event, and this module need not know where the SPEC 9 work defines it.
EXPIRY_EXCEPTION = "JobExpired"
# Seconds a stopping worker waits for listeners still hearing its last events: one listener's cut
# for the event being heard, one more for WorkerStopping's.
STOP_GRACE = 10.0


class WorkerEvents:
    """The events of one worker on one connection."""

    def __init__(self, connection: str, secrets: list[str] | None = None, announcer: Announcer | None = None) -> None:
        self.connection = connection
        self.secrets = secrets or []
        self.announcer = announcer or Announcer()
        self._heard = listening()     # wants(), without a call: asked twice per job

    # -- an attempt ------------------------------------------------------------------------

    def processing(self, attempt: Attempt) -> Awaitable[None] | None:
        """Before the middleware and handle() (SPEC 10): what to await until its listeners have heard it
        (each cut at 5 s), or None when no one listens, so that costs no coroutine."""
        if JobProcessing in self._heard:
            return self.announcer.announce_and_wait(JobProcessing(**self._job(attempt)))
        return None

    def processed(self, attempt: Attempt, outcome: str = "succeeded") -> None:
        """Acknowledged: handle() returned ("succeeded"), or the job deleted itself ("skipped")."""
        if JobProcessed in self._heard:
            self._announce(JobProcessed(**self._job(attempt), duration=_took(attempt), outcome=outcome))

    def released(self, attempt: Attempt, delay: float, reason: str, exc: BaseException | None = None) -> None:
        """Back on the queue: after an exception (a try used) or a release (the job's or a middleware's)."""
        self._timed_out(attempt, exc)
        if wants(JobReleased):
            self._announce(JobReleased(**self._job(attempt), duration=_took(attempt), reason=reason, delay=delay,
                                       exception=None if exc is None else self._line(exc),
                                       outcome="retried" if reason == "exception" else "released"))

    def failed(self, attempt: Attempt, exc: BaseException, summary: str) -> None:
        """A failed_jobs row was written by this worker; `summary` is its exception's first line."""
        self._timed_out(attempt, exc)
        if type(exc).__name__ == EXPIRY_EXCEPTION and wants(JobExpired):
            self._announce(JobExpired(**self._job(attempt)))
        if wants(JobFailed):
            self._announce(JobFailed(**self._job(attempt), exception=summary, duration=_took(attempt)))

    def deleted(self, attempt: Attempt, reason: str) -> None:
        """Removed without a failed_jobs row: expired quietly, or skipped (self.delete(), Skip)."""
        if reason == "expired":
            if wants(JobExpired):
                self._announce(JobExpired(**self._job(attempt), quietly=True))
        else:
            self.processed(attempt, "skipped")

    def _timed_out(self, attempt: Attempt, exc: BaseException | None) -> None:
        """JobTimedOut comes first, then the JobReleased or JobFailed saying what became of the job."""
        if isinstance(exc, JobTimeoutError) and wants(JobTimedOut):
            self._announce(JobTimedOut(**self._job(attempt), duration=_took(attempt), exception=self._line(exc)))

    # -- the worker ------------------------------------------------------------------------

    def starting(self, queues: tuple[str, ...], concurrency: int) -> None:
        if wants(WorkerStarting):
            self._announce(WorkerStarting(connection=self.connection, queues=queues, concurrency=concurrency))

    async def stopping(self, queues: tuple[str, ...], reason: str, status: int) -> None:
        """WorkerStopping, then wait (at most STOP_GRACE) for listeners still hearing events."""
        if wants(WorkerStopping):
            self._announce(WorkerStopping(connection=self.connection, queues=queues, reason=reason, status=status))
        await self.announcer.close(STOP_GRACE)

    # -- building --------------------------------------------------------------------------

    def _announce(self, event: Event) -> None:
        self.announcer.announce(event)

    def _job(self, attempt: Attempt) -> dict:
        """JobEvent's fields. A payload that could not be decoded names its id and class unverified."""
        reserved, payload = attempt.reserved, attempt.payload
        if payload is not None:
            job_id, job_class = payload.uuid, payload.job
        else:
            job_id, job_class = peek_uuid(reserved.payload) or reserved.id, _claimed_class(reserved.payload)
        return {"connection": self.connection, "queue": reserved.queue, "job_id": job_id, "job_class": job_class,
                "attempts": reserved.attempts}


    def _line(self, exc: BaseException) -> str:
        """The exception's first line as failed_jobs would record it: `module.Class: message`, redacted."""
        cls = type(exc)
        name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        message = (str(exc).strip().splitlines() or [""])[0]
        return redact(f"{name}: {message}" if message else name, self.secrets)


def _claimed_class(raw: str | bytes) -> str:
    """The class a rejected payload names, printable (as queue:failed shows it), or "?"."""
    try:
        job = json.loads(raw).get("job", "?")
    except (ValueError, TypeError, AttributeError, RecursionError):
        return "?"
    return one_line(job, 120) if isinstance(job, str) else "?"


def _took(attempt: Attempt) -> float:
    return time.monotonic() - attempt.started

