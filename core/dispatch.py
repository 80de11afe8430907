"""PendingDispatch: `await SendEmailJob.dispatch(...).delay(60).on_queue("high")` pushes the job."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
import weakref
from collections.abc import Callable, Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from core import events
from core.context import current
from core.errors import ConnectionFailed, FrameworkError, QueueConnectionError
from core.events import JobQueued
from core.job import Job, validate_queue_name
from core.job_settings import frozen_middleware
from core.options import MAX_DELAY
from core.payload import Payload, check_size
from core.queue.status import JobRef, JobStatus

if TYPE_CHECKING:
    from core.app import Application
    from core.queue.contract import QueueConnection

log = logging.getLogger("dispatch")


def delay_seconds(delay: float | timedelta | datetime) -> float:
    """Seconds from now; a naive datetime is local time, as datetime.timestamp() reads it."""
    if isinstance(delay, timedelta):
        seconds = max(0.0, delay.total_seconds())
    elif isinstance(delay, datetime):
        seconds = max(0.0, delay.timestamp() - time.time())
    elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
        seconds = max(0.0, float(delay)) if delay == delay else float("nan")     # max() would turn NaN into 0
    else:
        raise FrameworkError(f"delay must be seconds, a timedelta or a datetime, got {type(delay).__name__}")
    if not seconds <= MAX_DELAY:        # NaN too
        raise FrameworkError(f"delay must be at most {MAX_DELAY} seconds (50 years), got {delay!r}")
    return seconds


class PendingDispatch:
    def __init__(self, job: Job) -> None:
        self.job = job
        self._queue: str | None = None
        self._connection: str | None = None
        self._delay = 0.0
        self._through: list[Any] = []
        self._awaited = False

    def delay(self, delay: float | timedelta | datetime) -> "PendingDispatch":
        with self._refused():
            self._delay = delay_seconds(delay)
        return self

    def on_queue(self, queue: str) -> "PendingDispatch":
        with self._refused():
            self._queue = validate_queue_name(queue)
        return self

    def on_connection(self, connection: str) -> "PendingDispatch":
        self._connection = connection
        return self

    def priority(self, priority: int) -> "PendingDispatch":
        """-100..100, higher runs first (SPEC 11); checked at dispatch (InvalidPriority)."""
        self.job.priority = priority      # type: ignore[misc]   # the instance's setting, frozen at dispatch
        return self

    def keep_result(self, seconds: float) -> "PendingDispatch":
        """Keep the completed job's record (and return value) for `seconds` (SPEC 11)."""
        self.job.keep_result = seconds    # type: ignore[misc]
        return self

    def through(self, middleware: list[Any]) -> "PendingDispatch":
        """Middleware for this dispatch only, run after the class's own: it travels in the payload."""
        if not isinstance(middleware, (list, tuple)):
            self._awaited = True        # refused: the error says so, not a "never awaited" line
            raise FrameworkError(f"through() takes a list of middleware, got {type(middleware).__name__}")
        self._through = list(middleware)
        return self

    @contextlib.contextmanager
    def _refused(self) -> Generator[None, None, None]:
        """A setting refused while the dispatch is built: the caller gets the error, and this dispatch,
        which can no longer be awaited, does not also log that it never was."""
        try:
            yield
        except BaseException:
            self._awaited = True
            raise

    def __await__(self) -> Generator[Any, None, JobRef]:
        self._awaited = True
        return push(self.job, queue=self._queue, connection=self._connection, delay=self._delay,
                    through=self._through).__await__()

    def __del__(self) -> None:
        if not self._awaited:
            log.warning("%s.dispatch(...) was never awaited; the job was not pushed", type(self.job).__name__)


async def push(job: Job, *, queue: str | None = None, connection: str | None = None, delay: float = 0,
               through: list[Any] | None = None) -> JobRef:
    """One job: _push_all's path without the grouping (a sequential dispatch's every microsecond
    is a share of its rate)."""
    app = current()
    announce = events.wants(JobQueued)      # before the push: loading app/listeners.py may fail
    payload, raw = _encode(app, job, queue, through, delay)
    retrying = _Retrying(app, [(payload, raw)])
    conn = await _open(app, connection or job.connection, retrying)
    inline = None
    if conn.runs_inline:
        inline = await _run_inline(job, payload)
    elif conn.pushes_in_flight:
        await _push_grouped(conn, payload.queue, raw, delay, retrying)
    else:
        await _push_group(conn, payload.queue, [raw], delay, retrying)
    if announce:
        await _announce(conn.name, [payload], delay)
    return JobRef(payload.uuid, conn.name, payload.queue, keep_result=payload.keep_result, inline=inline)


async def _run_inline(job: Job, payload: Payload) -> JobStatus:
    """The sync connection: run now (an exception reaches the caller, as before); wait() on its ref
    returns the value at once."""
    value = await run_now(job, payload)
    return JobStatus(state="completed", queue=payload.queue, job=payload.job, attempts=1, max_tries=payload.max_tries,
                     dispatched_at=payload.pushed_at, id=payload.uuid, result=value, keep_result=payload.keep_result)


async def _announce(connection: str, payloads: list[Payload], delay: float) -> None:
    """JobQueued for each job whose push is confirmed."""
    for payload in payloads:
        await events.emit(JobQueued(connection=connection, queue=payload.queue, job_id=payload.uuid,
                                    job_class=payload.job, attempts=0, delay=delay))


def _encode(app: "Application", job: Job, queue: str | None,
            through: list[Any] | None = None, delay: float = 0.0) -> tuple[Payload, str]:
    """A new job's payload, with a fresh id; a retry of this dispatch pushes the same text."""
    middleware = frozen_middleware(job, through, app.config.app.job_packages) if through else None
    payload = job.to_payload(queue, middleware, delay)
    raw = payload.encode(app.config.app.key)
    check_size(raw, app.config.queue.max_payload_bytes, payload.display_name)
    job.dispatched_as(payload)
    return payload, raw


async def dispatch(job: Job, *, queue: str | None = None, connection: str | None = None,
                   delay: float | timedelta | datetime = 0) -> JobRef:
    """Push a job instance built by hand; returns its id."""
    return await push(job, queue=queue, connection=connection, delay=delay_seconds(delay))


async def dispatch_many(jobs: list[Job], *, queue: str | None = None, connection: str | None = None) -> list[JobRef]:
    """Push several jobs; jobs bound for the same connection and queue go in one round trip. One
    JobRef per job, in the order given."""
    return await _push_all(jobs, queue=queue, connection=connection)


async def _push_all(jobs: list[Job], *, queue: str | None, connection: str | None,
                    delay: float = 0) -> list[JobRef]:
    """Encode every job first (so a bad one pushes nothing), then push per connection and queue."""
    app = current()
    announce = events.wants(JobQueued)
    groups: dict[tuple[str | None, str], list[tuple[Job, Payload, str]]] = {}
    order = []
    for job in jobs:
        payload, raw = _encode(app, job, queue, delay=delay)
        groups.setdefault((connection or job.connection, payload.queue), []).append((job, payload, raw))
        order.append(payload.uuid)
    refs: dict[str, JobRef] = {}
    for (conn_name, queue_name), items in groups.items():
        retrying = _Retrying(app, [(payload, raw) for _, payload, raw in items])
        conn = await _open(app, conn_name, retrying)
        if conn.runs_inline:  # runs here and now; the job object is at hand
            for job, payload, _ in items:
                refs[payload.uuid] = JobRef(payload.uuid, conn.name, queue_name, keep_result=payload.keep_result,
                                            inline=await _run_inline(job, payload))
        else:
            await _push_group(conn, queue_name, [raw for _, _, raw in items], delay, retrying)
            for _, payload, _ in items:
                refs[payload.uuid] = JobRef(payload.uuid, conn.name, queue_name, keep_result=payload.keep_result)
        if announce:
            await _announce(conn.name, [payload for _, payload, _ in items], delay)
    return [refs[job_id] for job_id in order]


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

    @classmethod
    def joined(cls, each: "list[_Retrying]") -> "_Retrying":
        """A group's: every dispatch's items, within the earliest deadline (none waits longer)."""
        retrying = copy.copy(min(each, key=lambda r: r.deadline))
        retrying.items = [item for r in each for item in r.items]
        return retrying

    @property
    def what(self) -> str:
        payload = self.items[0][0]
        return f"{payload.display_name} [{payload.uuid}]" if len(self.items) == 1 else f"{len(self.items)} jobs"

    def gave_up(self, problem: str) -> QueueConnectionError:
        given = f"gave up after {self.limit:g}s" if self.limit else "not retried"
        return QueueConnectionError(f"Cannot dispatch {self.what}: {problem}; {given} (QUEUE_DISPATCH_TIMEOUT)")

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
            raise self.gave_up(problem) from None
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


# A group push's bounds: one script call or statement never grows without bound (large payloads
# go in smaller groups; a payload over GROUP_BYTES by itself goes alone).
GROUP_LIMIT = 500
GROUP_BYTES = 1 << 20


class _Waiting:
    """A dispatch waiting to go with the next group: its payload, its own deadline, its answer."""

    __slots__ = ("raw", "retrying", "done")

    def __init__(self, raw: str, retrying: _Retrying) -> None:
        self.raw = raw
        self.retrying = retrying
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _InFlight:
    """One connection's pushes of one (queue, delay) on the wire, and the dispatches waiting for them.
    Kept while idle (a sequential dispatcher makes none per dispatch), up to KEPT_IDLE of them."""

    __slots__ = ("queue", "delay", "pushes", "waiting")
    KEPT_IDLE = 64

    def __init__(self, queue: str, delay: float) -> None:
        self.queue = queue
        self.delay = delay
        self.pushes = 0
        self.waiting: list[_Waiting] = []

    @classmethod
    def of(cls, conn: "QueueConnection", queue: str, delay: float) -> "_InFlight":
        pushing = conn.pushing
        if pushing is None:
            pushing = conn.pushing = {}
        flight = pushing.get((queue, delay))
        if flight is None:
            if len(pushing) >= cls.KEPT_IDLE:     # many delays (datetimes): forget the idle ones
                for key in [key for key, idle in pushing.items() if not idle.pushes and not idle.waiting]:
                    del pushing[key]
            flight = pushing[(queue, delay)] = cls(queue, delay)
        return flight


_group_tasks: set[asyncio.Task[None]] = set()      # running group pushes (a task needs a reference)


async def _push_grouped(conn: "QueueConnection", queue: str, raw: str, delay: float, retrying: _Retrying) -> None:
    """Group commit: a dispatch that finds fewer than conn.pushes_in_flight pushes of its queue on
    the wire pushes at once, alone (nothing waits for a timer); those that arrive while they are
    wait, and go together as one push of many as soon as one is answered. Each returns once its
    own job is stored, or raises its group's error."""
    flight = _InFlight.of(conn, queue, delay)
    if flight.pushes >= conn.pushes_in_flight:
        await _wait_for_group(flight.waiting, raw, retrying)
        return
    flight.pushes += 1
    try:
        await _push_group(conn, queue, [raw], delay, retrying)
    finally:
        _pushed(conn, flight)


async def _wait_for_group(waiting: list[_Waiting], raw: str, retrying: _Retrying) -> None:
    entry = _Waiting(raw, retrying)
    waiting.append(entry)
    try:
        await entry.done
    except asyncio.CancelledError:
        with contextlib.suppress(ValueError):   # not taken into a group yet: it never will be
            waiting.remove(entry)
        raise


def _pushed(conn: "QueueConnection", flight: _InFlight) -> None:
    """A push of the flight's queue is answered: send what waited meanwhile (within the bounds) as one push."""
    flight.pushes -= 1
    if not flight.waiting:
        return
    taken, size = 0, 0
    for entry in flight.waiting[:GROUP_LIMIT]:
        size += len(entry.raw)
        if taken and size > GROUP_BYTES:
            break
        taken += 1
    group = flight.waiting[:taken]
    del flight.waiting[:taken]
    flight.pushes += 1
    task = asyncio.get_running_loop().create_task(_push_waiting(conn, flight, group))
    _group_tasks.add(task)
    task.add_done_callback(_group_tasks.discard)


async def _push_waiting(conn: "QueueConnection", flight: _InFlight, group: list[_Waiting]) -> None:
    """One push of a group, retried as a whole (a retry pushes only what is missing, so no job is
    stored twice); each waiting dispatch gets the outcome, a QueueConnectionError in its own words."""
    group = [entry for entry in group if not entry.done.done()]     # a cancelled one is not pushed
    now = asyncio.get_running_loop().time()
    late = [entry for entry in group if entry.retrying.limit and entry.retrying.deadline <= now]
    if late:        # out of time while waiting (the push before did not answer): not sent at all
        _answer(late, lambda entry: entry.retrying.gave_up(f"{conn.describe()} is unreachable (no answer)"))
        group = [entry for entry in group if not entry.done.done()]
    try:
        if group:
            retrying = _Retrying.joined([entry.retrying for entry in group])
            try:
                await _push_group(conn, flight.queue, [entry.raw for entry in group], flight.delay, retrying)
            except QueueConnectionError:
                _answer(group, lambda entry: entry.retrying.gave_up(retrying.problem))
            except asyncio.CancelledError:      # the loop is closing
                for entry in group:
                    entry.done.cancel()
                raise
            except Exception as exc:
                failure = exc
                _answer(group, lambda entry: failure)
            else:
                _answer(group, lambda entry: None)
    finally:
        _pushed(conn, flight)


def _answer(group: list[_Waiting], error: Callable[[_Waiting], BaseException | None]) -> None:
    for entry in group:
        if not entry.done.done():           # its caller gave up waiting (cancelled)
            problem = error(entry)
            if problem is None:
                entry.done.set_result(None)
            else:
                entry.done.set_exception(problem)


async def run_now(job: Job, payload: Payload | None = None) -> Any:
    """Run a job in this process: serialized and restored as a worker would (from `payload` when it
    was already made), through its middleware, failed() on error (core.queue.sync.run_inline)."""
    from core.queue.sync import run_inline

    if payload is None:
        payload = job.to_payload()
        job.dispatched_as(payload)
    return await run_inline(type(job).from_payload(payload, attempts=1), payload)
