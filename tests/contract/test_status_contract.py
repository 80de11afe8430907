"""SPEC 11 as every store must do it alike (SQLite, MySQL/MariaDB, Redis): a result is stored in the
acknowledgement's own step and never by a fenced-off worker; cancelling moves a waiting job to its
record in one step; priority order across delays and releases, straight on the connection."""
from __future__ import annotations

import asyncio
import json

from core.queue.contract import KeptResult
from tests.contract.conftest import payload
from tests.contract.test_queue_contract import EXPIRED


def uuid_of(raw: str) -> str:
    return json.loads(raw)["uuid"]


RECORD = KeptResult('{"state":"completed","job":"tests.jobs.contract_jobs.RecordRun","result":7}', 60)


async def test_a_result_is_stored_with_the_acknowledgement_and_not_by_a_fenced_off_worker(backend):
    conn = backend.conn
    first, second = payload(1), payload(2)
    await conn.push("results", first)
    await conn.push("results", second)
    held = await conn.reserve(["results"])
    assert await conn.complete_many([held], [RECORD]) == [True]
    status = await conn.job_status("results", uuid_of(first))
    assert (status.state, status.result) == ("completed", 7) and status.finished_at is not None

    stale = await conn.reserve(["results"])
    await asyncio.sleep(EXPIRED)                          # its reservation lapses...
    taken = await conn.reserve(["results"])               # ...and passes to another worker
    assert taken is not None and uuid_of(taken.payload) == uuid_of(second)
    assert await conn.complete_many([stale], [RECORD]) == [False]
    assert (await conn.job_status("results", uuid_of(second))).state == "reserved"   # no record, still held
    assert await conn.complete_many([taken], [RECORD]) == [True]
    assert (await conn.job_status("results", uuid_of(second))).state == "completed"


async def test_cancelling_a_waiting_job_removes_it_and_records_it_in_one_step(store):
    conn = store.conn
    pending, delayed, running = payload(1), payload(2), payload(3)
    await conn.push("cancel", running)
    held = await conn.reserve(["cancel"])
    await conn.push("cancel", pending)
    await conn.push("cancel", delayed, delay=3600)
    assert await conn.cancel_job("cancel", uuid_of(pending)) == "cancelled"
    assert await conn.cancel_job(None, uuid_of(delayed)) == "cancelled"
    assert await conn.cancel_job("cancel", uuid_of(pending)) == "cancelled"      # again: nothing changes
    assert await conn.reserve(["cancel"]) is None
    size = (await conn.sizes(["cancel"]))["cancel"]
    assert (size.pending, size.delayed, size.reserved) == (0, 0, 1)
    # A running job is flagged for its worker, which learns it with its renewal.
    assert await conn.cancel_job("cancel", uuid_of(running)) == "reserved"
    assert await conn.cancelled_among([held]) == [held.id]
    assert await conn.cancel_job("cancel", "no-such-job") == "unknown"
    # A repeated push of a cancelled job does not bring it back.
    await conn.push("cancel", pending)
    assert await conn.reserve(["cancel"]) is None


async def test_cancelling_a_job_whose_reservation_lapsed_removes_it_as_pending(backend):
    """A dead worker's job whose reservation lapsed is pending (SPEC 11: status says so): cancel removes
    it and records it cancelled, rather than flagging it for a worker that is gone, after which the
    next worker ran it."""
    conn = backend.conn
    await conn.push("lapsed", payload(1))
    dead = await conn.reserve(["lapsed"])
    await asyncio.sleep(EXPIRED)
    job_uuid = uuid_of(dead.payload)
    assert (await conn.job_status("lapsed", job_uuid)).state == "pending"
    assert await conn.cancel_job("lapsed", job_uuid) == "cancelled"
    assert (await conn.job_status("lapsed", job_uuid)).state == "cancelled"
    assert await conn.reserve(["lapsed"]) is None
    assert await conn.acknowledge(dead) is False                 # its worker, had it lived, holds nothing
    size = (await conn.sizes(["lapsed"]))["lapsed"]
    assert (size.pending, size.delayed, size.reserved) == (0, 0, 0)


async def test_priority_orders_due_jobs_and_a_release_keeps_its_place(store):
    conn = store.conn
    low, mid, high, top = (payload(n, options={"priority": p}) for n, p in ((1, -5), (2, 0), (3, 20), (4, 90)))
    mid = payload(2)
    for raw in (low, mid, high):
        await conn.push("prio", raw)
    await conn.push("prio", top, delay=1)
    first = await conn.reserve(["prio"])
    assert first.payload == high
    assert await conn.release(first, 0)                  # back to its place: before mid and low
    deadline = asyncio.get_running_loop().time() + 10
    while (await conn.job_status("prio", uuid_of(top))).state != "pending":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    taken = [await conn.reserve(["prio"]) for _ in range(4)]
    assert [job.payload for job in taken] == [top, high, mid, low]


async def test_a_batch_mixing_priorities_is_pushed_in_one_call_and_reserved_by_priority(store):
    conn = store.conn
    raws = [payload(n, options={"priority": p}) if p else payload(n) for n, p in enumerate((0, 7, 0, -3, 7))]
    await conn.push_many("batch", raws)
    taken = [await conn.reserve(["batch"]) for _ in range(5)]
    assert [job.payload for job in taken] == [raws[1], raws[4], raws[0], raws[2], raws[3]]


async def test_a_job_whose_reservation_lapsed_is_pending_not_reserved(backend):
    """A dead worker's job: once its reservation lapsed no one holds it, and the next reserve takes it
    back, so status() says pending (SPEC 11: reserved is "a worker holds it"), not reserved until then."""
    conn = backend.conn
    raw = payload(1)
    await conn.push("lapsed", raw)
    held = await conn.reserve(["lapsed"])
    assert held is not None and (await conn.job_status("lapsed", uuid_of(raw))).state == "reserved"
    await asyncio.sleep(EXPIRED)                          # its worker died: nothing renews it
    assert (await conn.job_status("lapsed", uuid_of(raw))).state == "pending"
    assert [j.id for j in await conn.jobs("lapsed", "pending", 10)] == [uuid_of(raw)]     # queue:jobs agrees
    assert await conn.jobs("lapsed", "reserved", 10) == []
    again = await conn.reserve(["lapsed"])
    assert again is not None and (await conn.job_status("lapsed", uuid_of(raw))).state == "reserved"
