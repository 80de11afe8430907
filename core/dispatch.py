"""PendingDispatch: `await SendEmailJob.dispatch(...).delay(60).on_queue("high")` pushes the job."""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

from core.errors import FrameworkError
from core.job import Job, validate_queue_name

log = logging.getLogger("dispatch")


def delay_seconds(delay: float | timedelta | datetime) -> float:
    """Seconds from now; a naive datetime is local time, as datetime.timestamp() reads it."""
    if isinstance(delay, timedelta):
        return max(0.0, delay.total_seconds())
    if isinstance(delay, datetime):
        return max(0.0, delay.timestamp() - time.time())
    if isinstance(delay, (int, float)) and not isinstance(delay, bool):
        return max(0.0, float(delay))
    raise FrameworkError(f"delay must be seconds, a timedelta or a datetime, got {type(delay).__name__}")


class PendingDispatch:
    def __init__(self, job: Job) -> None:
        self.job = job
        self._queue: str | None = None
        self._connection: str | None = None
        self._delay = 0.0
        self._awaited = False

    def delay(self, delay: float | timedelta | datetime) -> "PendingDispatch":
        self._delay = delay_seconds(delay)
        return self

    def on_queue(self, queue: str) -> "PendingDispatch":
        self._queue = validate_queue_name(queue)
        return self

    def on_connection(self, connection: str) -> "PendingDispatch":
        self._connection = connection
        return self

    def __await__(self) -> Generator[Any, None, str]:
        self._awaited = True
        return push(self.job, queue=self._queue, connection=self._connection, delay=self._delay).__await__()

    def __del__(self) -> None:
        if not self._awaited:
            log.warning("%s.dispatch(...) was never awaited; the job was not pushed", type(self.job).__name__)


async def push(job: Job, *, queue: str | None = None, connection: str | None = None, delay: float = 0) -> str:
    from core.app import current

    app = current()
    job.job_id = job.job_id or str(uuid.uuid4())
    payload = job.to_payload(queue)
    conn = await app.queue.connection(connection or job.connection)
    if conn.name == "sync":
        await run_now(job)
        return payload.uuid
    await conn.push(payload.queue, payload.encode(app.config.app.key), delay)
    return payload.uuid


async def dispatch(job: Job, *, queue: str | None = None, connection: str | None = None,
                   delay: float | timedelta | datetime = 0) -> str:
    """Push a job instance built by hand; returns its id."""
    return await push(job, queue=queue, connection=connection, delay=delay_seconds(delay))


async def dispatch_many(jobs: list[Job], *, queue: str | None = None, connection: str | None = None) -> list[str]:
    """Push several jobs; jobs bound for the same connection and queue go in one round trip."""
    from core.app import current

    app = current()
    groups: dict[tuple[str | None, str], list[str]] = {}
    ids = []
    for job in jobs:
        job.job_id = job.job_id or str(uuid.uuid4())
        payload = job.to_payload(queue)
        groups.setdefault((connection or job.connection, payload.queue), []).append(
            payload.encode(app.config.app.key))
        ids.append(payload.uuid)
    for (conn_name, queue_name), payloads in groups.items():
        conn = await app.queue.connection(conn_name)
        await conn.push_many(queue_name, payloads)
    return ids


async def run_now(job: Job) -> Any:
    """Run a job in this process: serialized and restored as a worker would, failed() on error."""
    job.job_id = job.job_id or str(uuid.uuid4())
    payload = job.to_payload()
    instance = type(job).from_payload(payload, attempts=1)
    try:
        return await instance.run_handle()
    except Exception as exc:
        await instance.run_failed(exc)
        raise
