"""The sync connection: a pushed job runs at once, in the dispatching process. It keeps no jobs,
so it offers no QueueAdmin (queue:size, queue:clear, queue:restart say so)."""
from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core import events
from core.context import current
from core.events import JobFailed, JobProcessed, JobProcessing
from core.job import Job, intent_of, resolve_job_class
from core.log import redact
from core.payload import Payload, restore_middleware
from core.pipeline import run_pipeline
from core.queue.contract import QueueConnection, ReservedJob
from core.queue.middleware.context import attempt_context

log = logging.getLogger("dispatch")

if TYPE_CHECKING:
    from core.app import Application


class KeepsNothing(QueueConnection):
    """A connection that holds no job (sync, core.testing's fake): nothing to reserve, and every
    change of a job's state trivially succeeds."""

    async def reserve(self, queues: Sequence[str], claim: str | None = None) -> ReservedJob | None:
        return None

    async def acknowledge(self, job: ReservedJob) -> bool:
        return True

    async def release(self, job: ReservedJob, delay: float = 0, *, free: bool = False) -> bool:
        return True

    async def mark_failing(self, job: ReservedJob, exception: str, failed_ran: bool = False) -> bool:
        return True

    async def fail(self, job: ReservedJob, exception: str) -> bool:
        return True

    async def extend(self, jobs: Sequence[ReservedJob]) -> None:
        return None


class SyncQueue(KeepsNothing):
    name = "sync"
    runs_inline = True

    def __init__(self, app: "Application") -> None:
        self.app = app

    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        decoded = Payload.decode(payload, self.app.config.app.key)
        cls = resolve_job_class(decoded.job, self.app.config.app.job_packages)
        await run_inline(cls.from_payload(decoded, attempts=1), decoded, self)   # under the payload's own id


# Per application, the state dispatch_sync's middleware keeps; weak, so an ended application's goes
# with it (an id() key could be reused by a later application and hand it stale limiter state).
_inline: "weakref.WeakKeyDictionary[Application, SyncQueue]" = weakref.WeakKeyDictionary()


async def run_inline(job: Job, payload: Payload, conn: SyncQueue | None = None) -> Any:
    """One attempt in this process, as a worker runs it: configured middleware, job.middleware(),
    the dispatch's .through() middleware, then handle(). Middleware state (RateLimited,
    WithoutOverlapping...) lives in this process. What the job or a middleware chose decides the
    end: fail(exc) calls failed() once; delete() and a release end the job here (nothing queues it
    again: a release is logged); an exception calls failed() and is raised to the caller."""
    app = current()
    conn = conn or _inline.get(app) or _inline.setdefault(app, SyncQueue(app))
    chain = [*app.config.queue.middleware, *job.middleware(), *restore_middleware(payload, app.config.app.job_packages)]
    reserved = ReservedJob(id=payload.uuid, queue=payload.queue, payload="", attempts=1, token="inline")
    heard = _Heard(conn.name, payload)
    if events.wants(JobProcessing):
        await events.emit(JobProcessing(**heard.fields))
    try:
        with attempt_context(conn, reserved, app.config.queue.visibility_timeout) as attempt:
            try:
                result = await run_pipeline(chain, job, lambda j: j.run_handle())
            finally:
                await attempt.release_locks()
    except Exception as exc:
        chosen = intent_of(job)
        if chosen is not None and chosen.kind in ("fail", "delete"):   # chosen before it raised: that stands
            return await _chosen(job, chosen, heard)
        await job.run_failed(exc)
        await heard.failed(exc)
        raise
    chosen = intent_of(job)
    if chosen is None or chosen.kind == "retry":
        await heard.processed("succeeded")
        return result
    return await _chosen(job, chosen, heard)


async def _chosen(job: Job, chosen: Any, heard: "_Heard") -> None:
    if chosen.kind == "fail":
        await job.run_failed(chosen.exception)
        log.info("%s [%s] failed by its %s on the sync connection: %s", type(job).__name__, job.job_id, chosen.by,
                 chosen.exception)
        await heard.failed(chosen.exception)
    elif chosen.kind == "delete":
        await heard.processed("skipped")
    elif chosen.kind == "release":     # no JobReleased: nothing puts it back (an event reports only what happened)
        log.warning("%s [%s] was released (by its %s) on the sync connection, which keeps no jobs: it is not run "
                    "again", type(job).__name__, job.job_id, chosen.by)
    return None


class _Heard:
    """The SPEC 10 events of a job run inline, as a worker reports them (JobProcessing before the
    middleware, JobProcessed or JobFailed at the end), built only when someone listens. JobFailed
    says the job failed and failed() was called; the sync connection writes no failed_jobs row."""

    def __init__(self, connection: str, payload: Payload) -> None:
        self.fields: dict[str, Any] = {"connection": connection, "queue": payload.queue, "job_id": payload.uuid,
                       "job_class": payload.job, "attempts": 1}
        self.started = time.monotonic()

    async def processed(self, outcome: str) -> None:
        if events.wants(JobProcessed):
            await events.emit(JobProcessed(**self.fields, duration=time.monotonic() - self.started, outcome=outcome))

    async def failed(self, exc: BaseException) -> None:
        if events.wants(JobFailed):
            cls = type(exc)
            name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
            message = (str(exc).strip().splitlines() or [""])[0]
            line = redact(f"{name}: {message}" if message else name, current().config.secrets())
            await events.emit(JobFailed(**self.fields, exception=line, duration=time.monotonic() - self.started))
