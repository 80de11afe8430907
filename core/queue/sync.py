"""The sync connection: a pushed job runs at once, in the dispatching process. It keeps no jobs,
so it offers no QueueAdmin (queue:size, queue:clear, queue:restart say so)."""
from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.context import current
from core.job import Job, intent_of, resolve_job_class
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
    try:
        with attempt_context(conn, reserved, app.config.queue.visibility_timeout) as attempt:
            try:
                result = await run_pipeline(chain, job, lambda j: j.run_handle())
            finally:
                await attempt.release_locks()
    except Exception as exc:
        chosen = intent_of(job)
        if chosen is not None and chosen.kind in ("fail", "delete"):   # chosen before it raised: that stands
            return await _chosen(job, chosen)
        await job.run_failed(exc)
        raise
    chosen = intent_of(job)
    return result if chosen is None or chosen.kind == "retry" else await _chosen(job, chosen)


async def _chosen(job: Job, chosen: Any) -> None:
    if chosen.kind == "fail":
        await job.run_failed(chosen.exception)
        log.info("%s [%s] failed by its %s on the sync connection: %s", type(job).__name__, job.job_id, chosen.by,
                 chosen.exception)
    elif chosen.kind == "release":
        log.warning("%s [%s] was released (by its %s) on the sync connection, which keeps no jobs: it is not run "
                    "again", type(job).__name__, job.job_id, chosen.by)
    return None
