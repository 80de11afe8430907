"""SPEC 15: testing helpers for applications. A pytest plugin: `pytest_plugins = ["core.testing"]`
gives the `queue_fake` fixture; `run_job` runs one job's middleware and handle() with no store.

The fake stands in for every queue connection at the one place dispatch opens one, so a job
still goes through the real encoding (SerializationError, queue names, the size limit, signing)
and the assertions see it restored from its payload, as a worker would: a test catches what a
worker would refuse. `dispatch_sync` is not intercepted. Never imported by the runtime.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import core.dispatch
from core.context import current
from core.job import Job, intent_of, resolve_job_class
from core.payload import Payload, restore_middleware
from core.pipeline import run_pipeline
from core.queue.contract import QueueConnection, ReservedJob
from core.queue.middleware.context import attempt_context
from core.queue.sync import KeepsNothing, SyncQueue
from core.queue.status import JobRef, JobStatus, completed_record, from_record
from core.worker.outcome import exception_text, first_line

__all__ = ["PushedJob", "QueueFake", "RunOutcome", "run_job"]


@dataclass
class PushedJob:
    job: Job                    # restored from its payload
    payload: Payload
    connection: str
    queue: str
    delay: float
    state: str = "pending"      # pending, then completed / failed / released / skipped after run_pushed()
    result: Any = None
    exception: BaseException | None = None
    attempts: int = 0           # 1 once run_pushed() ran it

    def describe(self) -> str:
        extra = f", delay {self.delay:g}s" if self.delay else ""
        data = json.dumps(self.payload.data, default=str)
        return f"{type(self.job).__name__} on {self.connection}/{self.queue}{extra} {data[:200]}"


def _check(ok: Any, message: str) -> None:
    """An assertion that holds under `python -O` too."""
    if not ok:
        raise AssertionError(message)


class _FakeConnection(KeepsNothing):
    """What dispatch pushes to while a QueueFake is installed: it decodes each payload as a worker does."""

    def __init__(self, fake: "QueueFake", name: str) -> None:
        self.fake = fake
        self.name = name

    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        app = current()
        decoded = Payload.decode(payload, app.config.app.key, app.config.queue.max_payload_bytes)
        job = resolve_job_class(decoded.job, app.config.app.job_packages).from_payload(decoded, attempts=0)
        self.fake.pushed.append(PushedJob(job, decoded, self.name, queue, float(delay)))

    async def job_status(self, queue: str | None, job_id: str) -> JobStatus | None:
        """What a real store would answer for the pushed job: the same states (a job that released
        itself waits, `delayed` or `pending`), a completed job's record built as a worker builds it
        (a result that cannot be kept makes wait() raise ResultNotSerializable), and `last_error`
        as `Class: message`."""
        for p in self.fake.pushed:
            if p.payload.uuid != job_id:
                continue
            if p.state == "completed" and p.payload.keep_result:
                return from_record(job_id, completed_record(p.payload, p.attempts, p.result))
            # Not run yet, or released: `delayed` while it has a delay (the fake keeps no clock: it stays so).
            state = p.state if p.state not in ("pending", "released") else "delayed" if p.delay else "pending"
            exception = None if p.exception is None else exception_text(p.exception, [])
            return JobStatus(state=state, queue=p.queue, job=p.payload.job, id=job_id, attempts=p.attempts,
                             max_tries=p.payload.max_tries, keep_result=p.payload.keep_result,
                             dispatched_at=p.payload.pushed_at,
                             last_error=None if p.exception is None else first_line(p.exception),
                             exception=exception if p.state == "failed" else None)
        return None

    async def cancel_job(self, queue: str | None, job_id: str) -> str:
        for p in self.fake.pushed:
            if p.payload.uuid == job_id and p.state == "pending":
                p.state = "cancelled"
        status = await self.job_status(queue, job_id)
        return "unknown" if status is None else status.state

    async def await_change(self, queue: str | None, job_id: str, seconds: float) -> None:
        """As a polled store: wait() asks again after `seconds` (another task may run_pushed() meanwhile),
        and raises WaitTimeout with the last state once its time is up."""
        await asyncio.sleep(seconds)


class QueueFake:
    """Records what is dispatched instead of pushing it. `with QueueFake.install(): ...` outside pytest."""

    def __init__(self) -> None:
        self.pushed: list[PushedJob] = []
        self._connections: dict[str, _FakeConnection] = {}

    @classmethod
    @contextlib.contextmanager
    def install(cls) -> Iterator["QueueFake"]:
        fake = cls()
        real_open, real_conn = core.dispatch._open, JobRef._conn

        async def fake_open(app: Any, name: str | None, retrying: Any) -> QueueConnection:
            return fake.connection(name or app.config.queue.default)

        async def fake_conn(ref: JobRef) -> QueueConnection:
            return fake.connection(ref.connection or current().config.queue.default)

        core.dispatch._open = fake_open      # the one place dispatch opens a connection
        JobRef._conn = fake_conn             # type: ignore[method-assign,assignment]   # where a ref asks
        try:
            yield fake
        finally:
            core.dispatch._open = real_open
            JobRef._conn = real_conn         # type: ignore[method-assign]

    def connection(self, name: str) -> _FakeConnection:
        if name not in self._connections:
            self._connections[name] = _FakeConnection(self, name)
        return self._connections[name]

    # -- what was pushed ---------------------------------------------------------------------

    def jobs(self, cls: type[Job] | None = None, callback: Callable[[Job], Any] | None = None,
             queue: str | None = None) -> list[Job]:
        """The jobs pushed (restored from their payloads), of a class, matching a callback, on a queue."""
        return [p.job for p in self._matching(cls, callback, queue)]

    def _matching(self, cls: type[Job] | None, callback: Callable[[Job], Any] | None, queue: str | None = None,
                  delay: float | None = None) -> list[PushedJob]:
        return [p for p in self.pushed if (cls is None or type(p.job) is cls) and (queue is None or p.queue == queue)
                and (delay is None or p.delay == delay) and (callback is None or callback(p.job))]

    def _listing(self) -> str:
        if not self.pushed:
            return "nothing was pushed"
        return "pushed: " + "; ".join(p.describe() for p in self.pushed)

    # -- assertions ----------------------------------------------------------------------------

    def assert_pushed(self, cls: type[Job], callback: Callable[[Job], Any] | None = None, *, times: int | None = None,
                      delay: float | None = None) -> None:
        found = len(self._matching(cls, callback, delay=delay))
        what = (f"{cls.__name__}{' matching the callback' if callback else ''}"
                f"{f' with delay {delay:g}' if delay else ''}")
        if times is None:
            _check(found, f"expected {what} to be pushed; {self._listing()}")
        else:
            _check(found == times, f"expected {what} pushed {times} time(s), got {found}; {self._listing()}")

    def assert_pushed_on(self, queue: str, cls: type[Job], callback: Callable[[Job], Any] | None = None) -> None:
        _check(self._matching(cls, callback, queue), (f"expected {cls.__name__} to be pushed on queue {queue!r}; "
                                                      f"{self._listing()}"))

    def assert_not_pushed(self, cls: type[Job], callback: Callable[[Job], Any] | None = None) -> None:
        found = self._matching(cls, callback)
        _check(not found, f"expected no {cls.__name__} to be pushed, got {len(found)}; {self._listing()}")

    def assert_nothing_pushed(self) -> None:
        _check(not self.pushed, f"expected nothing to be pushed; {self._listing()}")

    def assert_count(self, count: int) -> None:
        _check(len(self.pushed) == count, f"expected {count} job(s) pushed, got {len(self.pushed)}; {self._listing()}")

    # -- running what was pushed ---------------------------------------------------------------

    async def run_pushed(self) -> list[PushedJob]:
        """Run every pending pushed job in this process, in push order, and then what those push."""
        ran: list[PushedJob] = []
        while True:
            due = [p for p in self.pushed if p.state == "pending"]
            if not due:
                return ran
            for pushed in due:
                outcome = await run_job(pushed.job, attempts=1, payload=pushed.payload)
                pushed.result, pushed.exception, pushed.attempts = outcome.result, outcome.failed, 1
                if outcome.released is not None:
                    pushed.delay = outcome.released
                pushed.state = ("failed" if outcome.failed is not None else "released" if outcome.released is not None
                                else "skipped" if outcome.deleted else "completed")
                ran.append(pushed)


@dataclass
class RunOutcome:
    """How one attempt of run_job ended."""
    result: Any = None                      # handle()'s return value
    released: float | None = None           # the release delay, when the job or a middleware released it
    deleted: bool = False                   # delete() / Skip
    failed: BaseException | None = None     # fail(exc), or what handle() or a middleware raised
    middleware: list[Any] = field(default_factory=list)

    def failed_with(self, cls: type[BaseException]) -> bool:
        return isinstance(self.failed, cls)


async def run_job(job: Job, attempts: int = 1, payload: Payload | None = None) -> RunOutcome:
    """One attempt of `job` as a worker runs it, with no store: restored from its payload (so a value
    that cannot be serialized raises SerializationError here too), through the configured, class and
    `.through()` middleware, then handle(). failed() is not called: the outcome says what happened."""
    app = current()
    if payload is None:
        payload = Payload.decode(job.to_payload().encode(app.config.app.key), app.config.app.key)
    restored = type(job).from_payload(payload, attempts)
    chain = [*app.config.queue.middleware, *restored.middleware(),
             *restore_middleware(payload, app.config.app.job_packages)]
    reserved = ReservedJob(id=payload.uuid, queue=payload.queue, payload="", attempts=attempts, token="test")
    outcome = RunOutcome(middleware=chain)
    try:
        with attempt_context(SyncQueue(app), reserved, app.config.queue.visibility_timeout) as context:
            try:
                outcome.result = await run_pipeline(chain, restored, lambda j: j.run_handle())
            finally:
                await context.release_locks()
    except Exception as exc:  # noqa: BLE001  (the outcome reports it)
        outcome.failed = exc
    intent = intent_of(restored)
    if intent is not None:
        if intent.kind == "release":
            outcome.released = intent.delay
        elif intent.kind == "delete":
            outcome.deleted = True
        elif intent.kind == "fail":
            outcome.failed = intent.exception
    return outcome


if importlib.util.find_spec("pytest") is not None:     # outside pytest, QueueFake.install() still works
    import pytest

    @pytest.fixture
    def queue_fake() -> Iterator[QueueFake]:
        """Every dispatch of the test is recorded, not pushed; after the test, dispatch reaches the store again."""
        with QueueFake.install() as fake:
            yield fake
