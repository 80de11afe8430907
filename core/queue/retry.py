"""Putting failed jobs back on their own connection and queue, attempts reset, id kept.

requeue, not push: the job's uuid is remembered as finished (fail() records it) and may still be
stored (a worker still failing it); requeue forgets the one and takes the other over."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.queue.database import DatabaseQueue
from core.queue.failed import FailedJob, FailedJobStore

if TYPE_CHECKING:
    from core.app import Application


@dataclass
class RetryResult:
    retried: list[FailedJob] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


async def retry_failed(app: "Application", ids: list[str] | None, queue: str | None = None) -> RetryResult:
    """Retry the failed jobs with these ids (all of them, or all of one queue, when ids is None)."""
    store = await app.queue.failed_store()
    result = RetryResult()
    if ids is None:
        jobs = await store.all(queue)
    else:
        jobs = []
        for job_id in ids:
            found = await store.find(job_id)
            if found is None or (queue and found.queue != queue):
                result.missing.append(job_id)
            else:
                jobs.append(found)
    for job in jobs:
        conn = await app.queue.connection(job.connection)
        if isinstance(conn, DatabaseQueue) and conn.db is store.db:
            if await store.db.retrying_conflicts(lambda: _requeue_in_one_transaction(store, conn, job)):
                result.retried.append(job)
        else:
            # Requeueing first: a crash in between leaves the failed row, never a lost job.
            await conn.requeue(job.queue, job.payload)
            if await store.forget(job.uuid):
                result.retried.append(job)
    return result


async def _requeue_in_one_transaction(store: FailedJobStore, conn: DatabaseQueue, job: FailedJob) -> bool:
    """The job is either still failed or back on its queue, never both or neither. It may deadlock
    with the worker that is failing the same job (both lock its jobs row and failed row); the
    caller runs it again."""
    async with store.db.transaction() as tx:
        if not await store.forget(job.uuid, session=tx):
            return False
        await conn.requeue_in(tx, job.queue, job.payload)
        return True
