"""PendingDispatch: `await SendEmailJob.dispatch(...).delay(60).on_queue("high")` pushes the job."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from core import events
from core.context import current
from core.errors import ConnectionFailed, FrameworkError, QueueConnectionError
from core.events import JobQueued
from core.job import Job, validate_queue_name
from core.job_settings import frozen_middleware
from core.payload import Payload, check_size

if TYPE_CHECKING:
    from core.app import Application
    from core.queue.contract import QueueConnection

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
        self._through: list[Any] = []
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

    def through(self, middleware: list[Any]) -> "PendingDispatch":
        """Middleware for this dispatch only, run after the class's own: it travels in the payload."""
        if not isinstance(middleware, (list, tuple)):
            raise FrameworkError(f"through() takes a list of middleware, got {type(middleware).__name__}")
        self._through = list(middleware)
        return self

    def __await__(self) -> Generator[Any, None, str]:
        self._awaited = True
        return push(self.job, queue=self._queue, connection=self._connection, delay=self._delay,
                    through=self._through).__await__()

    def __del__(self) -> None:
        if not self._awaited:
            log.warning("%s.dispatch(...) was never awaited; the job was not pushed", type(self.job).__name__)


async def push(job: Job, *, queue: str | None = None, connection: str | None = None, delay: float = 0,
               through: list[Any] | None = None) -> str:
    """One job: _push_all's path without the grouping (a sequential dispatch's every microsecond
    is a share of its rate)."""
    app = current()
    announce = events.wants(JobQueued)      # before the push: loading app/listeners.py may fail
    payload, raw = _encode(app, job, queue, through)
    retrying = _Retrying(app, [(payload, raw)])
    conn = await _open(app, connection or job.connection, retrying)
    if conn.runs_inline:
        await run_now(job, payload)
    else:
        await _push_group(conn, payload.queue, [raw], delay, retrying)
    if announce:
        await _announce(conn.name, [payload], delay)
    return payload.uuid


async def _announce(connection: str, payloads: list[Payload], delay: float) -> None:
    """JobQueued for each job whose push is confirmed."""
    for payload in payloads:
        await events.emit(JobQueued(connection=connection, queue=payload.queue, job_id=payload.uuid,
                                    job_class=payload.job, attempts=0, delay=delay))


def _encode(app: "Application", job: Job, queue: str | None,
            through: list[Any] | None = None) -> tuple[Payload, str]:
    """A new job's payload, with a fresh id; a retry of this dispatch pushes the same text."""
    middleware = frozen_middleware(job, through, app.config.app.job_packages) if through else None
    payload = job.to_payload(queue, middleware)
    raw = payload.encode(app.config.app.key)
    check_size(raw, app.config.queue.max_payload_bytes, payload.display_name)
    job.dispatched_as(payload)
    return payload, raw


async def dispatch(job: Job, *, queue: str | None = None, connection: str | None = None,
                   delay: float | timedelta | datetime = 0) -> str:
    """Push a job instance built by hand; returns its id."""
    return await push(job, queue=queue, connection=connection, delay=delay_seconds(delay))


async def dispatch_many(jobs: list[Job], *, queue: str | None = None, connection: str | None = None) -> list[str]:
    """Push several jobs; jobs bound for the same connection and queue go in one round trip."""
    return await _push_all(jobs, queue=queue, connection=connection)


async def _push_all(jobs: list[Job], *, queue: str | None, connection: str | None, delay: float = 0) -> list[str]:
    """Encode every job first (so a bad one pushes nothing), then push per connection and queue."""
    app = current()
    announce = events.wants(JobQueued)
    groups: dict[tuple[str | None, str], list[tuple[Job, Payload, str]]] = {}
    ids = []
    for job in jobs:
        payload, raw = _encode(app, job, queue)
        groups.setdefault((connection or job.connection, payload.queue), []).append((job, payload, raw))
        ids.append(payload.uuid)
    for (conn_name, queue_name), items in groups.items():
        retrying = _Retrying(app, [(payload, raw) for _, payload, raw in items])
        conn = await _open(app, conn_name, retrying)
        if conn.runs_inline:  # runs here and now; the job object is at hand
            for job, payload, _ in items:
                await run_now(job, payload)
        else:
            await _push_group(conn, queue_name, [raw for _, _, raw in items], delay, retrying)
        if announce:
            await _announce(conn.name, [payload for _, payload, _ in items], delay)
    return ids


class _Retrying:
    """QUEUE_DISPATCH_TIMEOUT at work: retry with backoff while the store is unreachable, then raise
    QueueConnectionError. Each attempt is cut at the deadline, so a dispatch never waits longer."""

    def __init__(self, app: "Application", items: list[tuple[Payload, str]]) -> None:
        self.limit = app.config.queue.dispatch_timeout
        self.deadline = asyncio.get_running_loop().time() + self.limit
        self.pause = 0.05
        self.items = items
        self.problem = ""               # what the last attempt that failed by itself ran into
        self._scope: _Cut | None = None

    @property
    def what(self) -> str:
        payload = self.items[0][0]
        return f"{payload.display_name} [{payload.uuid}]" if len(self.items) == 1 else f"{len(self.items)} jobs"

    def attempt(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if not self.limit:
            return contextlib.nullcontext()
        self._scope = _Cut(self.deadline)
        return self._scope

    def out_of_time(self) -> bool:
        """Whether the last attempt was cut by the deadline (rather than failing by itself)."""
        return self._scope is not None and self._scope.expired

    async def after(self, problem: str) -> None:
        """Wait before the next attempt, or raise once the time is up."""
        self.problem = problem
        remaining = self.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            given = f"gave up after {self.limit:g}s" if self.limit else "not retried"
            raise QueueConnectionError(f"Cannot dispatch {self.what}: {problem}; {given} "
                                       "(QUEUE_DISPATCH_TIMEOUT)") from None
        log.debug("dispatch of %s: %s; retrying", self.what, problem)
        await asyncio.sleep(min(self.pause, remaining))
        self.pause = min(1.0, self.pause * 2)


class _Cut:
    """asyncio.timeout_at(deadline) for a dispatch attempt, kept by a shared clock (_Clock) rather
    than a timer of its own: a timer per attempt was about 5 us of a 100 us dispatch. It raises
    TimeoutError out of the block once the deadline has passed (at most TICK late)."""

    __slots__ = ("deadline", "expired", "_task", "_clock", "_cancelling")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False

    async def __aenter__(self) -> "_Cut":
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = self._task.cancelling()
        self._clock = _Clock.of(asyncio.get_running_loop())
        self._clock.add(self)
        return self

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._clock.remove(self)
        # As asyncio.Timeout: our cancellation becomes TimeoutError; anyone else's stays a cancellation.
        if self.expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


class _Clock:
    """One per event loop: while dispatch attempts are in flight, looks at their deadlines every
    TICK seconds and cuts those past theirs; with none in flight it does not tick."""

    TICK = 0.05
    _current: "_Clock | None" = None       # the last one used: the one a single loop finds at once
    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clock]" = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)     # not a strong one: _by_loop forgets the clock with its loop
        self.cuts: dict[_Cut, None] = {}
        self._tick: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop()  # type: ignore[return-value]

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "_Clock":
        clock = cls._current
        if clock is None or clock.loop is not loop:     # another loop: in another thread, or a second asyncio.run
            clock = cls._by_loop.get(loop)
            if clock is None:
                clock = cls._by_loop[loop] = cls(loop)
            cls._current = clock
        return clock

    def add(self, cut: _Cut) -> None:
        self.cuts[cut] = None
        if self._tick is None:
            self._tick = self.loop.call_later(self.TICK, self._look)

    def remove(self, cut: _Cut) -> None:
        self.cuts.pop(cut, None)

    def _look(self) -> None:
        self._tick = None
        now = self.loop.time()
        for cut in [cut for cut in self.cuts if cut.deadline <= now]:
            del self.cuts[cut]
            cut.expire()
        if self.cuts:
            self._tick = self.loop.call_later(self.TICK, self._look)


async def _open(app: "Application", name: str | None, retrying: _Retrying) -> "QueueConnection":
    """The connection, opened within QUEUE_DISPATCH_TIMEOUT (a dispatch may be its first use)."""
    conn = app.queue.opened(name)
    if conn is not None:
        return conn
    while True:
        try:
            async with retrying.attempt():
                return await app.queue.connection(name)
        except ConnectionFailed as exc:           # names the store, its address and the reason
            await retrying.after(str(exc))
        except TimeoutError:
            if not retrying.out_of_time():
                raise
            await retrying.after(retrying.problem or f"{app.queue.describe(name)} is unreachable (no answer)")


async def _push_group(conn: "QueueConnection", queue: str, raws: list[str], delay: float,
                      retrying: _Retrying) -> None:
    """Push one connection's and queue's jobs. A failed attempt may have stored them all the same
    (the command arrived, its answer was lost), so a retry pushes only what is missing."""
    failed_before = False
    while True:
        try:
            async with retrying.attempt():
                if failed_before:
                    await conn.push_missing(queue, raws, delay)
                elif len(raws) == 1:
                    await conn.push(queue, raws[0], delay)
                else:
                    await conn.push_many(queue, raws, delay)
            return
        except Exception as exc:
            reason = conn.connection_error(exc)
            if retrying.out_of_time():          # cut at the deadline: the cause is the last one seen
                problem = retrying.problem or f"{conn.describe()} is unreachable (no answer)"
            elif reason is None:
                raise
            else:
                problem = f"{conn.describe()} is unreachable ({reason})"
            failed_before = True
            await retrying.after(problem)


async def run_now(job: Job, payload: Payload | None = None) -> Any:
    """Run a job in this process: serialized and restored as a worker would (from `payload` when it
    was already made), through its middleware, failed() on error (core.queue.sync.run_inline)."""
    from core.queue.sync import run_inline

    if payload is None:
        payload = job.to_payload()
        job.dispatched_as(payload)
    return await run_inline(type(job).from_payload(payload, attempts=1), payload)
