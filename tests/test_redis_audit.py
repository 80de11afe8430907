"""Issue 11 (the "Nothing lost, for real" audit), Redis side: one regression test per finding,
against the real Redis on the suite's db."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest

from bootstrap.app import create_app
from core.queue.redis import RedisQueue


def raw(**extra) -> str:
    return json.dumps({"uuid": str(uuid.uuid4()), "job": "x.Y", **extra})


@pytest.fixture
async def app(redis_env, monkeypatch):
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    async with create_app() as app:
        yield app


@pytest.fixture
async def q(app) -> RedisQueue:
    return await app.queue.connection()


async def sizes(q: RedisQueue, queue: str) -> tuple[int, int, int]:
    size = (await q.sizes([queue]))[queue]
    return size.pending, size.delayed, size.reserved


async def second_connection(q: RedisQueue) -> RedisQueue:
    """Another connection to the same queues, as a second process holds."""
    other = RedisQueue(q.config, q.failed, q.visibility_timeout)
    await other.open()
    return other


# -- finding 2: queue:retry racing the worker that is failing the job ----------------------------

async def test_a_retry_racing_the_worker_that_fails_the_job_leaves_it_queued_once(q, app):
    store = await app.queue.failed_store()
    payload = raw()
    await q.push("race", payload)
    job = await q.reserve(["race"])
    # The worker's fail(), step by step: renew (token check), write the failed row ...
    assert await q._extend_queue("race", [job]) == [1]      # renewed, and nobody cancelled it
    await store.record(q.name, "race", job.payload, "RuntimeError: boom")
    # ... queue:retry runs now: requeue, then forget the row ...
    await q.requeue("race", payload)
    assert await store.forget(job.id)
    # ... and the worker's delete comes last: the job is no longer its.
    assert await q.acknowledge(job) is False
    assert await q.mark_failing(job, "RuntimeError: boom") is False
    assert await q.release(job) is False
    assert await q._extend_queue("race", [job]) == [0]

    assert await sizes(q, "race") == (1, 0, 0)
    assert await store.all() == []
    again = await q.reserve(["race"])
    assert (again.id, again.payload, again.attempts, again.failing) == (job.id, payload, 1, None)
    assert await q.reserve(["race"]) is None


async def test_a_retry_after_the_worker_deleted_the_job_pushes_it_fresh(q, app):
    payload = raw()
    await q.push("race", payload)
    job = await q.reserve(["race"])
    assert await q.fail(job, "RuntimeError: boom")
    await q.requeue("race", payload)            # forgets the finished record, pushes again
    assert await sizes(q, "race") == (1, 0, 0)
    assert (await q.reserve(["race"])).attempts == 1


async def test_requeue_brings_a_delayed_job_back_to_its_place_at_once(q):
    first, second = raw(), raw()
    await q.push_many("place", [first, second])
    job = await q.reserve(["place"])
    assert await q.release(job, delay=60)
    await q.requeue("place", first)
    assert [j.payload for j in await q.reserve_many(["place"], 5)] == [first, second]


# -- finding 5 and 11: a job that finished is never stored again within the window --------------

async def test_a_push_of_an_acknowledged_job_is_a_no_op(q):
    payload = raw()
    await q.push("replay", payload)
    assert await q.acknowledge(await q.reserve(["replay"]))
    await q.push("replay", payload)                         # a dispatch retried after its answer was lost
    await q.push_many("replay", [payload, payload])
    await q.push("replay", payload, delay=1)
    assert await sizes(q, "replay") == (0, 0, 0)
    assert await q.reserve(["replay"]) is None


async def test_a_push_of_a_failed_job_is_a_no_op(q):
    payload = raw()
    await q.push("replay", payload)
    assert await q.fail(await q.reserve(["replay"]), "RuntimeError: no")
    await q.push("replay", payload)
    assert await sizes(q, "replay") == (0, 0, 0)


async def test_a_finished_job_written_into_redis_directly_is_dropped_not_run(q, caplog):
    payload = raw()
    job_id = json.loads(payload)["uuid"]
    await q.push("replay", payload)
    assert await q.acknowledge(await q.reserve(["replay"]))
    k = q.keys("replay")
    await q.client.hset(k.jobs, mapping={job_id: payload, f"{job_id}:seq": 99})
    await q.client.zadd(k.ready, {job_id: 99})
    fresh = raw()
    await q.push("replay", fresh)
    with caplog.at_level(logging.WARNING, logger="worker"):
        taken = await q.reserve_many(["replay"], 5)
    assert [j.payload for j in taken] == [fresh]
    assert [r.getMessage() for r in caplog.records] == [f"{job_id} already ran; a repeated push of it was dropped"]
    assert await q.client.hexists(k.jobs, job_id) == 0      # deleted, not left behind


async def test_the_finished_record_is_trimmed_after_the_window_and_expires_with_it(q):
    short = RedisQueue(q.config, q.failed, q.visibility_timeout, replay_window=1)
    await short.open()
    try:
        old = raw()
        await short.push("window", old)
        assert await short.acknowledge(await short.reserve(["window"]))
        done = short.keys("window").done
        assert 0 < await short.client.ttl(done) <= 1
        await asyncio.sleep(1.2)
        await short.push("window", raw())
        assert await short.acknowledge(await short.reserve(["window"]))     # trims the old entry
        assert await short.client.zcard(done) == 1
        await short.push("window", old)                                       # outside the window: runs
        assert (await short.reserve(["window"])).payload == old
    finally:
        await short.close()


async def test_a_zero_window_remembers_nothing(q):
    none = RedisQueue(q.config, q.failed, q.visibility_timeout, replay_window=0)
    await none.open()
    try:
        payload = raw()
        await none.push("nowindow", payload)
        assert await none.acknowledge(await none.reserve(["nowindow"]))
        assert await none.client.exists(none.keys("nowindow").done) == 0
    finally:
        await none.close()


# -- findings 7 and 8 (store side): the failing mark -----------------------------------------------

async def test_a_failing_mark_comes_back_with_the_job_once_its_worker_is_gone(q):
    await q.push("failing", raw())
    job = await q.reserve(["failing"])
    assert await q.mark_failing(job, "RuntimeError: first")
    assert await q.mark_failing(job, "RuntimeError: first", failed_ran=True)
    await asyncio.sleep(2.3)                                # the worker died: the reservation lapses
    again = await q.reserve(["failing"])
    assert (again.attempts, again.failing, again.failed_ran) == (2, "RuntimeError: first", True)
    assert await q.mark_failing(job, "late") is False        # the dead worker's token is fenced off
    assert await q.release(again)
    third = await q.reserve(["failing"])
    assert (third.attempts, third.failing, third.failed_ran) == (3, None, False)


async def test_mark_failing_renews_the_reservation(q):
    await q.push("failing", raw())
    job = await q.reserve(["failing"])
    await asyncio.sleep(1.2)
    assert await q.mark_failing(job, "RuntimeError: slow failed()")
    await asyncio.sleep(1.2)                                # 2.4 s after reserve, 1.2 s after the mark
    assert await q.reserve(["failing"]) is None
    assert await sizes(q, "failing") == (0, 0, 1)


async def test_requeue_clears_a_failing_mark_and_the_attempts(q):
    payload = raw()
    await q.push("failing", payload)
    job = await q.reserve(["failing"])
    assert await q.mark_failing(job, "RuntimeError: x", failed_ran=True)
    await q.requeue("failing", payload)
    again = await q.reserve(["failing"])
    assert (again.attempts, again.failing, again.failed_ran) == (1, None, False)


async def test_no_state_is_left_behind_by_a_failing_job(q):
    await q.push("failing", raw())
    job = await q.reserve(["failing"])
    assert await q.mark_failing(job, "RuntimeError: x")
    assert await q.fail(job, "RuntimeError: x")
    assert await q.client.exists(q.keys("failing").state, q.keys("failing").jobs) == 0


# -- finding 9 (store side): claims ----------------------------------------------------------------

async def test_a_lost_reserve_answer_is_recovered_without_counting_a_try(q):
    await q.push_many("claims", [raw(n=n) for n in range(3)])
    claim = uuid.uuid4().hex
    lost = await q.reserve_many(["claims"], 5, claim=claim)   # the worker never hears this answer
    recovered = await q.recover(["claims"], claim)
    assert [(j.id, j.token, j.attempts) for j in recovered] == [(j.id, j.token, 1) for j in lost]
    assert all(await q.acknowledge_many(recovered))
    assert await q.recover(["claims"], claim) == []


async def test_a_reserve_retried_with_its_claim_returns_the_same_jobs(q):
    await q.push_many("claims", [raw(n=n) for n in range(4)])
    claim = uuid.uuid4().hex
    first = await q.reserve_many(["claims"], 2, claim=claim)
    # The client's retry after a dropped connection runs the same script call again.
    second = await q.reserve_many(["claims"], 2, claim=claim)
    assert [(j.id, j.token, j.attempts) for j in second] == [(j.id, j.token, j.attempts) for j in first]
    assert await sizes(q, "claims") == (2, 0, 2)


async def test_a_reserve_retried_with_its_claim_reserves_afresh_once_it_holds_none(q):
    await q.push_many("claims", [raw(n=n) for n in range(2)])
    claim = uuid.uuid4().hex
    first = await q.reserve_many(["claims"], 2, claim=claim)
    assert all([await q.release(j) for j in first])             # taken back (queue:retry, expiry)
    second = await q.reserve_many(["claims"], 2, claim=claim)
    assert [(j.id, j.attempts) for j in second] == [(j.id, 2) for j in first]
    assert [j.token for j in await q.recover(["claims"], claim)] == [j.token for j in second]


async def test_recover_skips_jobs_taken_over_since(q):
    await q.push_many("claims", [raw(n=n) for n in range(2)])
    claim = uuid.uuid4().hex
    lost = await q.reserve_many(["claims"], 2, claim=claim)
    assert await q.release(lost[0])
    assert [j.id for j in await q.recover(["claims"], claim)] == [lost[1].id]
    assert await q.recover(["claims"], uuid.uuid4().hex) == []


async def test_recover_returns_the_failing_mark_and_renews(q):
    await q.push("claims", raw())
    claim = uuid.uuid4().hex
    [lost] = await q.reserve_many(["claims"], 1, claim=claim)
    assert await q.mark_failing(lost, "RuntimeError: x", failed_ran=True)
    await asyncio.sleep(1.2)
    [found] = await q.recover(["claims"], claim)
    assert (found.failing, found.failed_ran, found.attempts) == ("RuntimeError: x", True, 1)
    await asyncio.sleep(1.2)                                 # renewed by recover: still held
    assert await q.reserve(["claims"]) is None


async def test_a_blocked_reserve_with_a_claim_is_recoverable(q):
    other = await second_connection(q)
    try:
        claim = uuid.uuid4().hex
        waiting = asyncio.create_task(q.reserve_wait(["wait"], timeout=5, claim=claim))
        await asyncio.sleep(0.1)                             # blocked in the pipelined BLPOP + reserve
        await other.push("wait", raw())
        lost = await waiting
        [found] = await q.recover(["wait"], claim)
        assert (found.id, found.token, found.attempts) == (lost.id, lost.token, 1)
    finally:
        await other.close()


async def test_a_reserve_without_a_claim_writes_no_claim(q):
    await q.push("claims", raw())
    assert await q.reserve(["claims"]) is not None
    assert [k for k in await q.client.keys("*") if ":claim:" in k] == []


async def test_claim_records_expire_after_two_visibility_timeouts(q):
    await q.push("claims", raw())
    claim = uuid.uuid4().hex
    await q.reserve_many(["claims"], 1, claim=claim)
    [key] = [k for k in await q.client.keys("*") if ":claim:" in k]
    assert key == f"queues:{{claims}}:claim:{claim}"
    assert 2 * q.visibility_timeout * 1000 - 1000 < await q.client.pttl(key) <= 2 * q.visibility_timeout * 1000
