"""Putting failed jobs back on their own connection and queue, attempts reset, id kept.

requeue, not push: the job's uuid is remembered as finished (fail() records it) and may still be
stored (a worker still failing it); requeue forgets the one and takes the other over. Each
connection knows how to do it with its failed row (QueueConnection.requeue_failed)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core import events
from core.events import JobRetryRequested
from core.queue.failed import FailedJob

if TYPE_CHECKING:
    from core.app import Application


@dataclass
class RetryResult:
    retried: list[FailedJob] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


async def retry_failed(app: "Application", ids: list[str] | None, queue: str | None = None,
                       delay: float = 0) -> RetryResult:
    """Retry the failed jobs with these ids (all of them, or all of one queue, when ids is None),
    due after `delay` seconds."""
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
        if await conn.requeue_failed(store, job, delay):
            result.retried.append(job)
            await _announce(conn.name, job)
    return result


async def _announce(connection: str, job: FailedJob) -> None:
    """JobRetryRequested once the job is back on its queue, heard in this process (the command's)."""
    if events.wants(JobRetryRequested):
        await events.emit(JobRetryRequested(connection=connection, queue=job.queue, job_id=job.uuid,
                                            job_class=job.job_class, attempts=0))
