"""PendingDispatch: `await SendEmailJob.dispatch(...).delay(60).on_queue("high")` pushes the job."""
from __future__ import annotations

import logging
import time
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import Any

from core.errors import FrameworkError
from core.job import Job, validate_queue_name
from core.payload import check_size

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
    [job_id] = await _push_all([job], queue=queue, connection=connection, delay=delay)
    return job_id


async def dispatch(job: Job, *, queue: str | None = None, connection: str | None = None,
                   delay: float | timedelta | datetime = 0) -> str:
    """Push a job instance built by hand; returns its id."""
    return await push(job, queue=queue, connection=connection, delay=delay_seconds(delay))


async def dispatch_many(jobs: list[Job], *, queue: str | None = None, connection: str | None = None) -> list[str]:
    """Push several jobs; jobs bound for the same connection and queue go in one round trip."""
    return await _push_all(jobs, queue=queue, connection=connection)


async def _push_all(jobs: list[Job], *, queue: str | None, connection: str | None, delay: float = 0) -> list[str]:
    """Encode every job first (so a bad one pushes nothing), then push per connection and queue."""
    from core.app import current

    app = current()
    key, limit = app.config.app.key, app.config.queue.max_payload_bytes
    groups: dict[tuple[str | None, str], list[tuple[Job, str]]] = {}
    for job in jobs:
        payload = job.to_payload(queue)
        raw = payload.encode(key)
        check_size(raw, limit, payload.display_name)
        groups.setdefault((connection or job.connection, payload.queue), []).append((job, raw))
    for (conn_name, queue_name), items in groups.items():
        conn = await app.queue.connection(conn_name)
        if conn.name == "sync":  # runs here and now; the job object is at hand
            for job, _ in items:
                await run_now(job)
        elif len(items) == 1:
            await conn.push(queue_name, items[0][1], delay)
        else:
            await conn.push_many(queue_name, [raw for _, raw in items], delay)
    return [job.job_id for job in jobs]


async def run_now(job: Job) -> Any:
    """Run a job in this process: serialized and restored as a worker would, failed() on error."""
    payload = job.to_payload()
    instance = type(job).from_payload(payload, attempts=1)
    try:
        return await instance.run_handle()
    except Exception as exc:
        await instance.run_failed(exc)
        raise
