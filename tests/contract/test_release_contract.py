"""Releases that are not failed tries, and the store's clock at push and reserve (SPEC 9), on every store.

A free release counts itself in the release's own atomic step (tries used = attempts - releases);
a reserved job carries pushed_at, due_at and the reservation's `now` on the store's clock, from
which retry_until and expires_after are judged; queue:retry restarts both and resets releases.
"""
from __future__ import annotations

import asyncio
import time

from tests.contract.conftest import payload

QUEUE = "contract"


async def reserve_within(conn, seconds: float = 5.0):
    """The next job, waiting for a delayed one to come due (the database counts whole seconds)."""
    deadline = time.monotonic() + seconds
    while (job := await conn.reserve([QUEUE])) is None:
        assert time.monotonic() < deadline, "no job came due"
        await asyncio.sleep(0.1)
    return job


async def test_a_free_release_is_counted_and_a_plain_one_is_a_try(backend):
    conn = backend.conn
    await conn.push(QUEUE, payload(1))
    job = await conn.reserve([QUEUE])
    assert (job.attempts, job.releases) == (1, 0)
    assert await conn.release(job, free=True) is True
    job = await conn.reserve([QUEUE])
    assert (job.attempts, job.releases) == (2, 1)              # tries used: still 1
    assert await conn.release(job, 0) is True                  # a failed try: not counted as a release
    job = await conn.reserve([QUEUE])
    assert (job.attempts, job.releases) == (3, 1)
    assert await conn.release(job, 1, free=True) is True       # delayed, and free
    assert await conn.release(job, 0, free=True) is False      # no longer held: counts nothing
    job = await reserve_within(conn)
    assert (job.attempts, job.releases) == (4, 2)


async def test_a_release_by_a_holder_that_lost_its_reservation_counts_nothing(backend):
    conn = backend.conn
    await conn.push(QUEUE, raw := payload(2))
    stale = await conn.reserve([QUEUE])
    await conn.requeue(QUEUE, raw)                             # queue:retry takes it over
    assert await conn.release(stale, free=True) is False
    job = await conn.reserve([QUEUE])
    assert (job.attempts, job.releases) == (1, 0)


async def test_queue_retry_resets_the_releases_of_a_job_failed_or_still_stored(backend):
    conn = backend.conn
    await conn.push(QUEUE, raw := payload(3))
    job = await conn.reserve([QUEUE])
    assert await conn.release(job, free=True)
    job = await conn.reserve([QUEUE])
    assert await conn.fail(job, "RuntimeError: boom")
    await conn.requeue(QUEUE, raw)                             # stored again
    job = await conn.reserve([QUEUE])
    assert (job.attempts, job.releases) == (1, 0)
    assert await conn.release(job, free=True)
    job = await conn.reserve([QUEUE])
    await conn.requeue(QUEUE, raw)                             # still stored: taken over
    job = await conn.reserve([QUEUE])
    assert (job.attempts, job.releases) == (1, 0)


async def test_a_reserved_job_carries_its_push_and_due_times_on_the_store_clock(backend):
    conn = backend.conn
    await conn.push(QUEUE, first := payload(4))
    await conn.push(QUEUE, later := payload(5), delay=1)
    job = await conn.reserve([QUEUE])
    assert job.payload == first
    assert job.due_at == job.pushed_at <= job.now
    assert abs(job.now - time.time()) < 2                      # the store is on this host: about our clock
    assert await conn.release(job, 3, free=True)               # a release moves neither time
    job = await reserve_within(conn)
    assert job.payload == later
    # Redis keeps fractions of a second; the database whole seconds, the due time rounded up.
    assert 0.99 <= job.due_at - job.pushed_at <= 2
    assert job.pushed_at < job.due_at <= job.now


async def test_a_delayed_batch_carries_its_due_time(backend):
    conn = backend.conn
    await conn.push_many(QUEUE, [payload(6), payload(7)], delay=1)
    jobs = [await reserve_within(conn), await reserve_within(conn)]
    assert all(0.99 <= j.due_at - j.pushed_at <= 2 for j in jobs)


async def test_a_release_keeps_the_push_time_and_queue_retry_restarts_it(backend):
    conn = backend.conn
    await conn.push(QUEUE, raw := payload(8))
    first = await conn.reserve([QUEUE])
    await asyncio.sleep(1.1)                                   # the database counts whole seconds
    assert await conn.release(first, free=True)
    again = await conn.reserve([QUEUE])
    assert (again.pushed_at, again.due_at) == (first.pushed_at, first.due_at)
    assert again.now >= first.now + 1
    await conn.requeue(QUEUE, raw)                             # still stored: taken over
    retried = await conn.reserve([QUEUE])
    assert retried.pushed_at >= first.pushed_at + 1 and retried.due_at == retried.pushed_at
    assert await conn.fail(retried, "RuntimeError: boom")
    await asyncio.sleep(1.1)
    await conn.requeue(QUEUE, raw)                             # failed: stored again
    last = await conn.reserve([QUEUE])
    assert last.pushed_at >= retried.pushed_at + 1


async def test_a_recovered_reservation_carries_the_same_counts_and_times(backend):
    conn = backend.conn
    await conn.push(QUEUE, payload(9))
    job = await conn.reserve([QUEUE])
    assert await conn.release(job, free=True)
    taken = await conn.reserve_many([QUEUE], 1, claim="lost-answer")
    [recovered] = await conn.recover([QUEUE], "lost-answer")
    assert (recovered.attempts, recovered.releases, recovered.pushed_at, recovered.due_at) == (
        taken[0].attempts, taken[0].releases, taken[0].pushed_at, taken[0].due_at) == (2, 1, job.pushed_at, job.due_at)
    assert recovered.now >= taken[0].now
