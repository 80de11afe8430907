"""The queue contract, one body per case, run against every connection (see conftest.py).

tests/test_redis_cluster.py imports these cases to run them on a real Redis Cluster too.
"""
from __future__ import annotations

import asyncio
import json
import time

from core.dispatch import dispatch_many
from core.payload import Payload
from tests.contract.conftest import APP_KEY, VISIBILITY_TIMEOUT, payload
from tests.jobs.contract_jobs import RecordRun

EXPIRED = VISIBILITY_TIMEOUT + 1.3     # long enough for a reservation to lapse on every store


def counts(size) -> dict[str, int]:
    return size.as_dict()


async def test_push_reserve_acknowledge(backend):
    conn, raw = backend.conn, payload(1)
    await conn.push("contract", raw)
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 1, "delayed": 0, "reserved": 0}

    job = await conn.reserve(["contract"])
    assert job is not None
    assert (job.queue, job.payload, job.attempts) == ("contract", raw, 1)     # the payload's bytes unchanged
    assert await conn.reserve(["contract"]) is None
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 1}

    assert await conn.acknowledge(job) is True
    assert await conn.acknowledge(job) is False
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await conn.reserve(["contract"]) is None


async def test_jobs_of_one_queue_come_out_in_dispatch_order(backend):
    conn = backend.conn
    pushed = [payload(n) for n in range(30)]
    for raw in pushed[:10]:
        await conn.push("contract", raw)
    await conn.push_many("contract", pushed[10:])
    taken = []
    while (job := await conn.reserve(["contract"])) is not None:
        taken.append(job.payload)
        assert await conn.acknowledge(job)
    assert taken == pushed


async def test_acknowledge_and_reserve_acknowledges_then_takes_the_next_in_order(backend):
    """A worker at concurrency 1 hands its finished job's acknowledgement to the next reserve: done
    flags for the acknowledged, the next job in dispatch order, and nothing for a reservation no
    longer held."""
    conn = backend.conn
    pushed = [payload(n) for n in range(3)]
    await conn.push_many("contract", pushed)
    first = await conn.reserve(["contract"])
    done, [second] = await conn.acknowledge_and_reserve([first], "contract", "claimone")
    assert done == [True] and (second.payload, second.attempts) == (pushed[1], 1)
    done, [third] = await conn.acknowledge_and_reserve([second], "contract", "claimtwo")
    assert done == [True] and third.payload == pushed[2]
    assert await conn.acknowledge_and_reserve([third], "contract", "claimthree") == ([True], [])
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await conn.acknowledge_and_reserve([third], "contract", "claimfour") == ([False], [])   # not held


async def test_acknowledge_and_reserve_takes_up_to_its_limit_with_the_reservation_named(backend):
    """A worker above concurrency 1 hands every finished job's acknowledgement to the reserve that
    fills its free slots: all acknowledged, up to `limit` next jobs in dispatch order, and the call's
    claim names them (a lost answer is recovered, not taken again)."""
    conn = backend.conn
    pushed = [payload(n) for n in range(8)]
    await conn.push_many("contract", pushed)
    first = await conn.reserve_many(["contract"], 3)
    done, taken = await conn.acknowledge_and_reserve(first, "contract", "claimwide", 4)
    assert done == [True] * 3 and [job.payload for job in taken] == pushed[3:7]
    assert sorted(job.id for job in await conn.recover(["contract"], "claimwide")) == sorted(job.id for job in taken)
    done, rest = await conn.acknowledge_and_reserve(taken, "contract", "claimrest", 4)
    assert done == [True] * 4 and [job.payload for job in rest] == pushed[7:]
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 1}


async def test_thousands_of_jobs_are_reserved_and_acknowledged_in_one_call_each(backend):
    """A worker at --concurrency 5000 reserves, renews and acknowledges that many at once: no store
    call may stop at a limit of its own (Lua's unpack, a statement's placeholders) and leave the
    jobs to run again after the visibility timeout."""
    conn = backend.conn
    pushed = [payload(n) for n in range(5_000)]
    await conn.push_many("contract", pushed)
    held = await conn.reserve_many(["contract"], 5_000, claim="claimwide")
    assert [job.payload for job in held] == pushed
    await conn.extend(held)
    done, more = await conn.acknowledge_and_reserve(held[:2_500], "contract", "claimmore", 5_000)
    assert done == [True] * 2_500 and more == []
    assert await conn.acknowledge_many(held[2_500:]) == [True] * 2_500
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 0}


async def test_the_first_queue_with_a_due_job_wins(backend):
    conn = backend.conn
    low, high = payload(1), payload(2)
    await conn.push("contract-low", low)
    await conn.push("contract-high", high)
    first = await conn.reserve(["contract-high", "contract-low"])
    second = await conn.reserve(["contract-high", "contract-low"])
    assert (first.queue, first.payload) == ("contract-high", high)
    assert (second.queue, second.payload) == ("contract-low", low)
    assert await conn.reserve(["contract-high", "contract-low"]) is None


async def test_reserve_many_takes_a_batch_in_priority_then_dispatch_order(backend):
    conn = backend.conn
    high, low = [payload(n) for n in range(3)], [payload(n) for n in range(10, 16)]
    await conn.push_many("contract-high", high)
    await conn.push_many("contract-low", low)
    batch = await conn.reserve_many(["contract-high", "contract-low"], 5)
    assert [(j.queue, j.payload, j.attempts) for j in batch] == (
        [("contract-high", raw, 1) for raw in high] + [("contract-low", raw, 1) for raw in low[:2]])
    assert len({(j.id, j.token) for j in batch}) == 5
    rest = await conn.reserve_many(["contract-high", "contract-low"], 10)
    assert [j.payload for j in rest] == low[2:]
    assert await conn.reserve_many(["contract-high", "contract-low"], 10) == []
    # each job of a batch is fenced on its own: acknowledging one leaves the others held
    assert await conn.acknowledge(batch[0]) is True and await conn.acknowledge(batch[0]) is False
    assert [await conn.release(j) for j in batch[1:]] == [True] * 4
    sizes = await conn.sizes(["contract-high", "contract-low"])
    assert counts(sizes["contract-high"]) == {"pending": 2, "delayed": 0, "reserved": 0}
    assert counts(sizes["contract-low"]) == {"pending": 2, "delayed": 0, "reserved": 4}


async def test_due_jobs_run_in_dispatch_order_whatever_delayed_or_released_them(backend):
    conn = backend.conn
    early_delayed, retried, plain = payload(1), payload(2), payload(3)
    await conn.push("contract", early_delayed, delay=1)
    await conn.push("contract", retried)
    await conn.release(await conn.reserve(["contract"]), 0)     # a retry keeps its place in line
    await conn.push("contract", plain)
    await asyncio.sleep(2.2)                                     # the delayed job is due (whole seconds on SQL)
    taken = []
    while (job := await conn.reserve(["contract"])) is not None:
        taken.append(job.payload)
    assert taken == [early_delayed, retried, plain]


async def test_a_due_job_is_not_starved_by_a_steady_stream_of_ready_ones(backend):
    """A busy reserve may promote due rows only now and then (SQL: every 50 ms), never only once
    the ready ones run out: with a backlog that never drains, the delayed job still comes out."""
    conn, delayed = backend.conn, payload(0)
    await conn.push("contract", delayed, delay=1)
    await conn.push_many("contract", [payload(n) for n in range(1, 21)])
    deadline = time.monotonic() + 15
    n = 21
    while time.monotonic() < deadline:
        await conn.push("contract", payload(n))      # the backlog stays at 20 ready jobs
        n += 1
        job = await conn.reserve(["contract"])
        assert await conn.acknowledge(job)
        if job.payload == delayed:
            break
        await asyncio.sleep(0.005)
    assert job.payload == delayed, "the due job never came out while ready jobs kept arriving"


async def test_a_delayed_job_waits_until_it_is_due(backend):
    conn, raw = backend.conn, payload()
    await conn.push("contract", raw, delay=2)
    assert await conn.reserve(["contract"]) is None
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 1, "reserved": 0}
    await asyncio.sleep(3.2)
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 1, "delayed": 0, "reserved": 0}
    job = await conn.reserve(["contract"])
    assert (job.payload, job.attempts) == (raw, 1)


async def test_release_puts_a_job_back_after_its_delay_with_the_attempt_counted(backend):
    conn = backend.conn
    await conn.push("contract", payload())
    first = await conn.reserve(["contract"])
    assert await conn.release(first, delay=2) is True
    assert await conn.release(first, delay=0) is False          # released already: no longer held
    assert await conn.reserve(["contract"]) is None
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 1, "reserved": 0}
    await asyncio.sleep(3.2)
    second = await conn.reserve(["contract"])
    assert (second.id, second.payload, second.attempts) == (first.id, first.payload, 2)
    assert await conn.release(second) is True                   # no delay: due at once
    third = await conn.reserve(["contract"])
    assert (third.id, third.attempts) == (first.id, 3)


async def test_an_expired_reservation_passes_on_and_fences_off_the_old_holder(backend):
    conn = backend.conn
    await conn.push("contract", payload())
    stale = await conn.reserve(["contract"])
    assert await conn.reserve(["contract"]) is None             # reserved, not expired yet
    await asyncio.sleep(EXPIRED)

    holder = await conn.reserve(["contract"])
    assert (holder.id, holder.payload, holder.attempts) == (stale.id, stale.payload, 2)
    assert holder.token != stale.token
    assert await conn.acknowledge(stale) is False
    assert await conn.release(stale, delay=0) is False
    assert await conn.fail(stale, "RuntimeError: stale") is False
    await conn.extend([stale])
    failed = await backend.app.queue.failed_store()
    assert await failed.all() == []                             # a stale fail records nothing

    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 1}
    assert await conn.acknowledge(holder) is True
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 0}


async def test_acknowledging_a_batch_deletes_only_the_jobs_still_held(backend):
    conn = backend.conn
    await conn.push_many("contract", [payload(n) for n in range(3)])
    await conn.push("contract-other", payload(9))
    stale = await conn.reserve(["contract"])
    await asyncio.sleep(EXPIRED)                                # stale's reservation lapses...
    held = await conn.reserve_many(["contract"], 3)             # ...and passes on with the other two
    other = await conn.reserve(["contract-other"])
    assert stale.id in {job.id for job in held}

    batch = [held[0], stale, other, held[1], held[2]]
    assert await conn.acknowledge_many(batch) == [True, False, True, True, True]
    assert await conn.acknowledge_many(held) == [False, False, False]
    assert await conn.acknowledge_many([]) == []
    sizes = await conn.sizes(["contract", "contract-other"])
    assert {q: counts(s) for q, s in sizes.items()} == {q: {"pending": 0, "delayed": 0, "reserved": 0}
                                                         for q in ("contract", "contract-other")}


async def test_extending_a_reservation_keeps_a_long_job_from_a_second_worker(backend):
    conn = backend.conn
    await conn.push("contract", payload())
    job = await conn.reserve(["contract"])
    until = time.monotonic() + VISIBILITY_TIMEOUT * 2.2
    while time.monotonic() < until:                             # runs for more than twice the timeout
        await conn.extend([job])
        assert await conn.reserve(["contract"]) is None
        await asyncio.sleep(0.4)
    assert await conn.acknowledge(job) is True
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 0}


async def test_fail_records_the_job_and_removes_it(backend):
    conn, raw = backend.conn, payload()
    await conn.push("contract", raw)
    job = await conn.reserve(["contract"])
    assert await conn.fail(job, "RuntimeError: boom\nTraceback ...") is True
    failed = await (await backend.app.queue.failed_store()).all()
    assert [(f.uuid, f.connection, f.queue, f.payload, f.summary) for f in failed] == [
        (json.loads(raw)["uuid"], conn.name, "contract", raw, "RuntimeError: boom")]
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await conn.acknowledge(job) is False


async def test_size_and_clear(backend):
    conn = backend.conn
    await conn.push_many("contract", [payload(n) for n in range(3)])
    await conn.push_many("contract", [payload(n) for n in range(2)], delay=60)
    await conn.push("contract-other", payload())
    held = await conn.reserve(["contract"])
    sizes = await conn.sizes()
    assert {q: counts(s) for q, s in sizes.items() if q.startswith("contract")} == {
        "contract": {"pending": 2, "delayed": 2, "reserved": 1},
        "contract-other": {"pending": 1, "delayed": 0, "reserved": 0}}
    assert counts((await conn.sizes(["contract-empty"]))["contract-empty"]) == {"pending": 0, "delayed": 0,
                                                                                "reserved": 0}

    assert await conn.clear("contract") == 4                    # pending and delayed; the reserved job stays
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 1}
    assert counts((await conn.sizes(["contract-other"]))["contract-other"])["pending"] == 1
    assert await conn.acknowledge(held) is True
    assert await conn.clear("contract") == 0


async def test_a_lapsed_reservation_counts_as_pending_and_queue_clear_deletes_it(backend):
    """A dead worker's job (its reservation lapsed, no one renews it) is due again: queue:size went on
    calling it reserved until some worker took it, and queue:clear left it ("Cleared 0")."""
    conn = backend.conn
    await conn.push_many("contract", [payload(1), payload(2)])
    dead = await conn.reserve(["contract"])
    alive = await conn.reserve(["contract"])
    assert dead is not None and alive is not None
    deadline = time.monotonic() + VISIBILITY_TIMEOUT + 3
    while counts((await conn.sizes(["contract"]))["contract"])["pending"] == 0:
        assert time.monotonic() < deadline, "the lapsed reservation never counted as pending"
        await conn.extend([alive])          # a live worker renews its own
        await asyncio.sleep(0.2)
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 1, "delayed": 0, "reserved": 1}
    assert await conn.clear("contract") == 1                    # the lapsed one; the held one stays
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 0, "reserved": 1}
    assert await conn.acknowledge(alive) is True
    assert await conn.acknowledge(dead) is False


async def test_a_retried_push_does_not_bring_back_a_job_cleared_since(backend):
    """A dispatch whose answer was lost retries its push (push_missing). If queue:clear deleted the
    job in between, the retry must not store it again: a cleared job would come back and run."""
    conn = backend.conn
    ready, delayed, other = payload(1), payload(2), payload(3)
    await conn.push("contract", ready)
    await conn.push("contract", delayed, delay=60)
    assert await conn.clear("contract") == 2

    await conn.push_missing("contract", [ready, other])
    await conn.push_missing("contract", [delayed], delay=60)
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 1, "delayed": 0, "reserved": 0}
    job = await conn.reserve(["contract"])
    assert job is not None and job.payload == other       # only the job never cleared
    assert await conn.acknowledge(job)


async def test_dispatch_many_pushes_every_job_in_order(backend, tmp_path):
    ids = await RecordRun.dispatch_many([{"path": str(tmp_path / "runs"), "n": n} for n in range(1200)])
    instances = []
    for n in range(5):
        job = RecordRun()
        job.n = 2000 + n
        instances.append(job)
    ids += await dispatch_many(instances, queue="contract")
    assert len(set(ids)) == 1205
    conn = backend.conn
    assert counts((await conn.sizes(["contract"]))["contract"])["pending"] == 1205

    taken = []
    while (job := await conn.reserve(["contract"])) is not None:
        body = Payload.decode(job.payload, APP_KEY)             # still signed: bytes kept as dispatched
        taken.append((body.uuid, body.data["n"]))
        await conn.acknowledge(job)
    assert taken == list(zip(ids, [*range(1200), *range(2000, 2005)]))


async def test_delayed_bulk_push(backend):
    conn = backend.conn
    await conn.push_many("contract", [payload(n) for n in range(3)], delay=60)
    assert counts((await conn.sizes(["contract"]))["contract"]) == {"pending": 0, "delayed": 3, "reserved": 0}
    assert await conn.reserve(["contract"]) is None


async def test_restart_signal_is_shared(backend):
    """queue:restart changes a value the store keeps; no clock is involved (a worker on a host whose
    clock is skewed still sees every restart exactly once)."""
    conn = backend.conn
    assert await conn.restart_signal() == ""
    await conn.request_restart()
    first = await conn.restart_signal()
    await conn.request_restart()
    second = await conn.restart_signal()
    assert "" != first != second != "" and await conn.restart_signal() == second
