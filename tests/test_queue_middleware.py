"""Job middleware (SPEC 9), each called directly: a real Job, a real store (SQLite, MySQL, Redis
through the `store` fixture), the attempt context set as the worker will set it, and a `next`
that records its calls."""
from __future__ import annotations

import asyncio
import contextlib

import pytest

from core.job import Intent, Job, intent_of
from core.queue.middleware import (FailOnException, InvalidMiddleware, RateLimited, Skip, ThrottlesExceptions,
                                   WithoutOverlapping, attempt_context, current_attempt)
from tests.contract.conftest import payload


class SyncDeviceJob(Job):
    def __init__(self) -> None:
        super().__init__()
        self.device_id = 7


class OtherJob(Job):
    pass


class Next:
    """The rest of the chain: records each job it is given; may wait for `gate`, or raise."""

    def __init__(self, raises: BaseException | None = None, gate: asyncio.Event | None = None) -> None:
        self.calls: list[Job] = []
        self.raises, self.gate = raises, gate
        self.entered = asyncio.Event()

    async def __call__(self, job: Job) -> str:
        self.calls.append(job)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.raises is not None:
            raise self.raises
        return "handled"


@contextlib.asynccontextmanager
async def attempt(store, visibility_timeout: float = 30):
    """A real reservation of a pushed job, with the attempt context a worker sets for it."""
    conn = store.conn
    await conn.push("middleware", payload())
    reserved = await conn.reserve(["middleware"])
    with attempt_context(conn, reserved, visibility_timeout) as context:
        yield context


async def run(store, middleware, job: Job | None = None, nxt: Next | None = None, **context):
    job = job or SyncDeviceJob()
    nxt = nxt or Next()
    async with attempt(store, **context):
        result = await middleware(job, nxt)
    return job, nxt, result


# -- RateLimited -------------------------------------------------------------------------------------------------


async def test_rate_limited_lets_allow_jobs_through_and_releases_the_next_until_it_may_start(store):
    limiter = RateLimited("vendor-api", allow=2, every=1)
    async with contextlib.AsyncExitStack() as stack:     # three reservations first: the hits come within 1 s
        contexts = [await stack.enter_async_context(attempt(store)) for _ in range(3)]
        outcomes = []
        for context in contexts:
            job, nxt = SyncDeviceJob(), Next()
            with attempt_context(context.connection, context.reserved, context.visibility_timeout):
                outcomes.append((job, nxt, await limiter(job, nxt)))
    assert [(len(n.calls), r, intent_of(j)) for j, n, r in outcomes[:2]] == [(1, "handled", None)] * 2
    job, nxt, result = outcomes[2]
    intent = intent_of(job)
    assert (nxt.calls, result, intent.kind, intent.by) == ([], None, "release", "middleware")
    assert 0 < intent.delay <= 1
    await asyncio.sleep(intent.delay + 0.05)
    job, nxt, _ = await run(store, limiter)                     # its window has room again
    assert (len(nxt.calls), intent_of(job)) == (1, None)


async def test_rate_limited_dont_release_skips_the_job_instead(store):
    limiter = RateLimited("report-api", allow=1, every=60).dont_release()
    await run(store, limiter)
    job, nxt, _ = await run(store, limiter)
    assert (nxt.calls, intent_of(job)) == ([], Intent("delete", 0.0, None, "middleware"))


# -- WithoutOverlapping ------------------------------------------------------------------------------------------


async def test_without_overlapping_runs_one_job_per_key_and_releases_the_other(store):
    gate = asyncio.Event()
    first = Next(gate=gate)
    overlap = WithoutOverlapping("device:7", release_after=10)
    async with attempt(store) as holder:
        running = asyncio.create_task(overlap(SyncDeviceJob(), first))
        await first.entered.wait()
        assert holder.held_locks() == [("overlap:device:7", holder.owner)]     # the heartbeat renews it
        assert await holder.renew_locks() == [True]
        job, second, _ = await run(store, WithoutOverlapping("device:7", release_after=10))
        assert (second.calls, intent_of(job)) == ([], Intent("release", 10.0, None, "middleware"))
        job, other, _ = await run(store, WithoutOverlapping("device:8"))       # another key runs
        assert len(other.calls) == 1
        gate.set()
        assert await running == "handled"
        assert holder.held_locks() == []                                     # freed when the code ended
    job, third, _ = await run(store, WithoutOverlapping("device:7"))
    assert (len(third.calls), intent_of(job)) == (1, None)


async def test_without_overlapping_frees_the_lock_when_the_job_raises_and_can_skip_instead(store):
    with pytest.raises(ValueError):
        await run(store, WithoutOverlapping("device:9"), nxt=Next(raises=ValueError("bad reading")))
    gate = asyncio.Event()
    holder = Next(gate=gate)
    async with attempt(store):
        running = asyncio.create_task(WithoutOverlapping("device:9")(SyncDeviceJob(), holder))
        await holder.entered.wait()
        job, nxt, _ = await run(store, WithoutOverlapping("device:9", release_after=None))
        assert (nxt.calls, intent_of(job)) == ([], Intent("delete", 0.0, None, "middleware"))
        job, nxt, _ = await run(store, WithoutOverlapping("device:9").dont_release())
        assert intent_of(job).kind == "delete"
        gate.set()
        await running


async def test_a_killed_workers_lock_lapses_with_its_reservation_and_its_late_free_is_harmless(store):
    stuck = Next(gate=asyncio.Event())                      # never let go: its worker was killed
    async with attempt(store, visibility_timeout=0.5):
        dead = asyncio.create_task(WithoutOverlapping("device:3")(SyncDeviceJob(), stuck))
        await stuck.entered.wait()
    await asyncio.sleep(0.8)                                # no heartbeat renewed it
    gate = asyncio.Event()
    taker = Next(gate=gate)
    async with attempt(store):
        alive = asyncio.create_task(WithoutOverlapping("device:3")(SyncDeviceJob(), taker))
        await taker.entered.wait()
        dead.cancel()                                       # its finally frees: not the new owner's lock
        with pytest.raises(asyncio.CancelledError):
            await dead
        job, nxt, _ = await run(store, WithoutOverlapping("device:3", release_after=5))
        assert intent_of(job).kind == "release"
        gate.set()
        await alive


async def test_the_worker_frees_what_a_cut_attempt_left_and_expire_after_is_not_renewed(store):
    gate = asyncio.Event()
    left = Next(gate=gate)
    async with attempt(store) as cut:
        behind = asyncio.create_task(WithoutOverlapping("device:4", expire_after=60)(SyncDeviceJob(), left))
        await left.entered.wait()
        assert cut.held_locks() == [] and len(cut.locks) == 1      # capped by expire_after: not renewed
        await cut.release_locks()                                  # the worker ends the attempt
        assert cut.locks == []
        job, nxt, _ = await run(store, WithoutOverlapping("device:4"))
        assert len(nxt.calls) == 1
        gate.set()
        await behind


# -- ThrottlesExceptions -----------------------------------------------------------------------------------------


async def test_throttles_exceptions_opens_after_max_exceptions_and_a_success_closes_it(store):
    def throttle() -> ThrottlesExceptions:
        return ThrottlesExceptions(max_exceptions=2, decay=2)

    for _ in range(2):
        with pytest.raises(ConnectionError):                       # each one a failed try, passed on
            await run(store, throttle(), nxt=Next(raises=ConnectionError("vendor down")))
    job, nxt, _ = await run(store, throttle())
    intent = intent_of(job)
    assert (nxt.calls, intent.kind, intent.by) == ([], "release", "middleware") and 0 < intent.delay <= 2
    job, nxt, _ = await run(store, throttle(), job=OtherJob())     # per class: another class still runs
    assert len(nxt.calls) == 1
    await asyncio.sleep(intent.delay + 0.05)
    job, nxt, _ = await run(store, throttle())                     # closed again: runs, and succeeds
    assert (len(nxt.calls), intent_of(job)) == (1, None)
    with pytest.raises(ConnectionError):
        await run(store, throttle(), nxt=Next(raises=ConnectionError("vendor down")))
    job, nxt, _ = await run(store, throttle())                     # one failure after a success: still closed
    assert len(nxt.calls) == 1


async def test_throttles_exceptions_by_key_spans_classes_and_counts_a_self_fail(store):
    def throttle() -> ThrottlesExceptions:
        return ThrottlesExceptions(max_exceptions=2, decay=60).by("vendor")

    class FailsItself(Next):
        async def __call__(self, job: Job) -> str:
            await super().__call__(job)
            job.fail("vendor refused")
            return "handled"

    with pytest.raises(ConnectionError):
        await run(store, throttle(), nxt=Next(raises=ConnectionError("vendor down")))
    await run(store, throttle(), job=OtherJob(), nxt=FailsItself())
    job, nxt, _ = await run(store, throttle())
    assert (nxt.calls, intent_of(job).kind) == ([], "release")
    assert 59 < intent_of(job).delay <= 60


async def test_throttles_exceptions_backoff_sets_the_retry_delay_of_the_failed_try(store):
    error = ConnectionError("vendor down")
    job = SyncDeviceJob()
    with pytest.raises(ConnectionError):
        await run(store, ThrottlesExceptions(max_exceptions=5, decay=60, backoff=30), job=job, nxt=Next(raises=error))
    assert intent_of(job) == Intent("retry", 30.0, error, "middleware")


# -- Skip and FailOnException (no store) --------------------------------------------------------------------------


async def call(middleware, job: Job, nxt: Next):
    return await middleware(job, nxt)


async def blocked(job: Job) -> bool:
    return job.device_id == 7


@pytest.mark.parametrize("middleware, runs", [
    (Skip.when(True), False), (Skip.when(False), True), (Skip.unless(True), True), (Skip.unless(False), False),
    (Skip.when(lambda: True), False), (Skip.when(lambda job: job.device_id == 8), True),
    (Skip.when(blocked), False), (Skip.unless(blocked), True),
])
async def test_skip_deletes_the_job_unrun_when_its_condition_says_so(middleware, runs):
    job, nxt = SyncDeviceJob(), Next()
    result = await call(middleware, job, nxt)
    if runs:
        assert (len(nxt.calls), result, intent_of(job)) == (1, "handled", None)
    else:
        assert (nxt.calls, result, intent_of(job)) == ([], None, Intent("delete", 0.0, None, "middleware"))


async def test_fail_on_exception_fails_at_once_on_the_listed_exceptions_only():
    error = ValueError("bad reading")
    job = SyncDeviceJob()
    assert await call(FailOnException([ValueError]), job, Next(raises=error)) is None
    assert intent_of(job) == Intent("fail", 0.0, error, "middleware")
    job = SyncDeviceJob()
    with pytest.raises(KeyError):
        await call(FailOnException([ValueError]), job, Next(raises=KeyError("device")))
    assert intent_of(job) is None
    job = SyncDeviceJob()
    await call(FailOnException(lambda exc, job: "fatal" in str(exc)), job, Next(raises=RuntimeError("fatal")))
    assert intent_of(job).kind == "fail"


async def test_fail_on_exception_keeps_the_jobs_own_choice():
    class Released(Next):
        async def __call__(self, job: Job) -> str:
            job.release(5)
            raise ValueError("bad reading")

    job = SyncDeviceJob()
    with pytest.raises(ValueError):
        await call(FailOnException([ValueError]), job, Released())
    assert intent_of(job) == Intent("release", 5.0, None, "job")


def through(middleware: list, nxt: Next):
    """The chain as the pipeline builds it: each middleware's `next` runs the rest, then `nxt`."""
    async def step(job: Job, i: int = 0):
        if i == len(middleware):
            return await nxt(job)
        return await middleware[i](job, lambda j: step(j, i + 1))

    return step


async def test_fail_on_exception_outside_a_throttle_replaces_its_retry_hint(store):
    error = ValueError("bad reading")
    job = SyncDeviceJob()
    async with attempt(store):
        chain = through([FailOnException([ValueError]), ThrottlesExceptions(backoff=30)], Next(raises=error))
        assert await chain(job) is None
    assert intent_of(job) == Intent("fail", 0.0, error, "middleware")


async def test_the_spec_example_chain_runs_the_job_once_all_let_it(store):
    job, nxt = SyncDeviceJob(), Next()
    async with attempt(store) as context:
        chain = through([Skip.when(job.device_id in {1, 2}), WithoutOverlapping(f"device:{job.device_id}", 10),
                         RateLimited("vendor-api", allow=60, every=60), ThrottlesExceptions(10, 600)], nxt)
        assert await chain(job) == "handled"
        assert context.locks == []
    assert (nxt.calls, intent_of(job)) == ([job], None)


# -- setup errors -------------------------------------------------------------------------------------------------


async def test_a_store_middleware_outside_an_attempt_is_one_clear_error():
    with pytest.raises(RuntimeError, match="runs only in a worker's attempt"):
        current_attempt()
    with pytest.raises(RuntimeError, match="runs only in a worker's attempt"):
        await RateLimited("x", 1, 1)(SyncDeviceJob(), Next())


@pytest.mark.parametrize("build, message", [
    (lambda: RateLimited("", 1, 1), "RateLimited: the key must be a text of 1-200 characters"),
    (lambda: RateLimited("k" * 201, 1, 1), "the key must be a text"),
    (lambda: RateLimited("api", 0, 1), "RateLimited: allow must be a whole number of at least 1, got 0"),
    (lambda: RateLimited("api", 2, 0), "RateLimited: every must be a finite number of seconds above 0"),
    (lambda: WithoutOverlapping("k", release_after=-1), "release_after must be a finite number of seconds 0 or"),
    (lambda: WithoutOverlapping("k", expire_after=float("inf")), "expire_after must be a finite number"),
    (lambda: ThrottlesExceptions(max_exceptions=1.5), "max_exceptions must be a whole number"),
    (lambda: ThrottlesExceptions().by(None), "ThrottlesExceptions.by: the key must be a text"),
    (lambda: Skip.when("yes"), "Skip: the condition must be a bool or a callable"),
    (lambda: FailOnException(ValueError), "FailOnException: give a list of exception classes"),
    (lambda: FailOnException(["ValueError"]), "FailOnException: give a list of exception classes"),
])
def test_a_bad_middleware_argument_is_one_clear_error(build, message):
    with pytest.raises(InvalidMiddleware, match=message.replace("(", r"\(")):
        build()
