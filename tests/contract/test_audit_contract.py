"""Issue 11 (the "Nothing lost, for real" audit): what every store must do alike, whatever keeps
its jobs. The `store` fixture runs each case on SQLite, MySQL/MariaDB and Redis; cases that wait
for a reservation to lapse use `backend` (a 2 s visibility timeout)."""
from __future__ import annotations

import asyncio
import json
import uuid

from tests.contract.conftest import payload
from tests.contract.test_queue_contract import EXPIRED


def job_uuid(raw: str) -> str:
    return json.loads(raw)["uuid"]


async def pending(conn, queue: str) -> int:
    return (await conn.sizes([queue]))[queue].pending


# -- finding 2: queue:retry racing the worker that fails the job -----------------------------------

async def test_a_requeue_racing_a_failing_worker_keeps_the_job_queued_once(store):
    conn, failed = store.conn, await store.app.queue.failed_store()
    raw = payload(1)
    await conn.push("audit", raw)
    job = await conn.reserve(["audit"])
    # The worker's fail() step by step, with queue:retry between writing the row and deleting the job.
    await conn.extend([job])
    await failed.record(conn.name, "audit", job.payload, "RuntimeError: boom")
    await conn.requeue("audit", raw)
    assert await failed.forget(job_uuid(raw))
    assert await conn.acknowledge(job) is False
    assert await conn.release(job) is False
    assert await conn.mark_failing(job, "RuntimeError: boom") is False

    assert await failed.all() == []
    again = await conn.reserve(["audit"])
    assert (again.payload, again.attempts, again.failing, again.failed_ran) == (raw, 1, None, False)
    assert await conn.reserve(["audit"]) is None


async def test_a_requeue_after_the_job_was_failed_runs_it_again(store):
    conn = store.conn
    raw = payload(2)
    await conn.push("audit", raw)
    assert await conn.fail(await conn.reserve(["audit"]), "RuntimeError: boom")
    await conn.requeue("audit", raw)
    again = await conn.reserve(["audit"])
    assert (again.payload, again.attempts) == (raw, 1)


# -- findings 5 and 11: a finished job is not run again within the replay window -------------------

async def test_a_job_pushed_again_after_it_was_acknowledged_does_not_run_again(store):
    conn = store.conn
    raw = payload(3)
    await conn.push("audit", raw)
    assert await conn.acknowledge(await conn.reserve(["audit"]))
    await conn.push("audit", raw)               # a dispatch retried after its answer was lost; a replay
    await conn.push_many("audit", [raw])
    assert await conn.reserve_many(["audit"], 5) == []
    assert await pending(store.conn, "audit") == 0


async def test_a_job_pushed_again_after_it_failed_does_not_run_again(store):
    conn = store.conn
    raw = payload(4)
    await conn.push("audit", raw)
    assert await conn.fail(await conn.reserve(["audit"]), "RuntimeError: no")
    await conn.push("audit", raw)
    assert await conn.reserve(["audit"]) is None


async def test_other_jobs_still_run_beside_a_replayed_one(store):
    conn = store.conn
    raw, fresh = payload(5), payload(6)
    await conn.push("audit", raw)
    assert await conn.acknowledge(await conn.reserve(["audit"]))
    await conn.push_many("audit", [raw, fresh])
    assert [j.payload for j in await conn.reserve_many(["audit"], 5)] == [fresh]


# -- findings 7 and 8: the failing mark --------------------------------------------------------------

async def test_a_failing_mark_is_fenced_and_cleared_by_release(store):
    conn = store.conn
    await conn.push("audit", payload(7))
    job = await conn.reserve(["audit"])
    assert await conn.mark_failing(job, "RuntimeError: x", failed_ran=True)
    assert await conn.release(job)
    again = await conn.reserve(["audit"])
    assert (again.attempts, again.failing, again.failed_ran) == (2, None, False)
    assert await conn.mark_failing(job, "late") is False


async def test_a_failing_mark_comes_back_when_the_worker_is_gone(backend):
    conn = backend.conn
    await conn.push("audit", payload(8))
    job = await conn.reserve(["audit"])
    assert await conn.mark_failing(job, "RuntimeError: first")
    assert await conn.mark_failing(job, "RuntimeError: first", failed_ran=True)
    await asyncio.sleep(EXPIRED)
    again = await conn.reserve(["audit"])
    assert (again.attempts, again.failing, again.failed_ran) == (2, "RuntimeError: first", True)
    assert await conn.fail(again, "RuntimeError: first")
    assert await conn.reserve(["audit"]) is None


async def test_a_requeue_clears_the_failing_mark(store):
    conn = store.conn
    raw = payload(9)
    await conn.push("audit", raw)
    job = await conn.reserve(["audit"])
    assert await conn.mark_failing(job, "RuntimeError: x")
    await conn.requeue("audit", raw)
    again = await conn.reserve(["audit"])
    assert (again.attempts, again.failing) == (1, None)


# -- finding 9: a reserve whose answer was lost ------------------------------------------------------

async def test_a_lost_reserve_answer_is_recovered_without_another_attempt(store):
    conn = store.conn
    await conn.push_many("audit", [payload(n) for n in range(3)])
    claim = uuid.uuid4().hex
    lost = await conn.reserve_many(["audit"], 2, claim=claim)
    recovered = await conn.recover(["audit"], claim)
    assert [(j.id, j.token, j.attempts, j.payload) for j in recovered] == [
        (j.id, j.token, 1, j.payload) for j in lost]
    assert all(await conn.acknowledge_many(recovered))
    assert await conn.recover(["audit"], claim) == []
    assert await conn.recover(["audit"], uuid.uuid4().hex) == []


async def test_recover_leaves_out_jobs_taken_back_since(store):
    conn = store.conn
    await conn.push_many("audit", [payload(n) for n in range(2)])
    claim = uuid.uuid4().hex
    lost = await conn.reserve_many(["audit"], 2, claim=claim)
    assert await conn.release(lost[0])
    assert [j.id for j in await conn.recover(["audit"], claim)] == [lost[1].id]


async def test_a_waiting_reserve_with_a_claim_is_recoverable(store):
    conn = store.conn
    await conn.push("audit", payload(10))
    claim = uuid.uuid4().hex
    lost = await conn.reserve_wait(["audit"], timeout=1, claim=claim)
    [found] = await conn.recover(["audit"], claim)
    assert (found.id, found.token, found.attempts) == (lost.id, lost.token, 1)
