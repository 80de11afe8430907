"""Group commit: dispatches in flight at once on one connection go to the store together (one
push of many), and every one of them still behaves as a dispatch of its own: its own id, its
delay, priority and queue, its own serialization error, its own JobQueued; on every store."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from core import events
from core.events import JobQueued, listen
from core.job import SerializationError
from core.payload import Payload
from core.queue.contract import QueueConnection
from tests.jobs.sample_jobs import RecordingJob


async def drain(store, queue: str, batch: int = 200) -> list[Payload]:
    """Every job ready on `queue`, reserved `batch` at a time (1: in the order the store takes them)."""
    conn: QueueConnection = store.conn
    taken: list[Payload] = []
    while jobs := await conn.reserve_many([queue], batch):
        taken += [Payload.decode(job.payload, store.app.config.app.key) for job in jobs]
    return taken


async def test_concurrent_dispatches_each_get_their_own_id_and_are_stored_once(store, tmp_path):
    log = str(tmp_path / "log")
    ids = await asyncio.gather(*(RecordingJob.dispatch(log=log, value=n) for n in range(100)))
    assert len(set(ids)) == 100
    stored = await drain(store, "default")
    assert Counter(payload.uuid for payload in stored) == Counter(ids)      # each once, none missing
    assert sorted(payload.data["value"] for payload in stored) == list(range(100))


async def test_more_dispatches_at_once_than_a_group_takes_are_all_stored_once(store, tmp_path):
    """Beyond a group's bound (500 jobs) the rest go in the next group."""
    ids = await asyncio.gather(*(RecordingJob.dispatch(log="-", value=n) for n in range(1100)))
    stored = await drain(store, "default")
    assert len(set(ids)) == 1100 and Counter(payload.uuid for payload in stored) == Counter(ids)


async def test_a_job_that_cannot_be_serialized_fails_its_own_dispatch_only(store):
    async def one(n: int) -> str:
        value = object() if n == 7 else n            # not JSON: SerializationError, before any push
        return await RecordingJob.dispatch(log="-", value=value)

    outcomes = await asyncio.gather(*(one(n) for n in range(20)), return_exceptions=True)
    assert isinstance(outcomes[7], SerializationError) and "RecordingJob" in str(outcomes[7])
    ids = [outcome for n, outcome in enumerate(outcomes) if n != 7]
    assert all(isinstance(job_id, str) for job_id in ids)
    stored = await drain(store, "default")
    assert Counter(payload.uuid for payload in stored) == Counter(ids)


async def test_each_job_keeps_its_delay_priority_and_queue(store):
    async def one(n: int) -> tuple[str, str, bool, int]:
        queue, delayed, priority = ("left", "right")[n % 2], n % 3 == 0, n % 5 - 2
        pending = RecordingJob.dispatch(log="-", value=n).on_queue(queue).priority(priority)
        if delayed:
            pending = pending.delay(300)
        return await pending, queue, delayed, priority

    sent = await asyncio.gather(*(one(n) for n in range(60)))
    sizes = await store.conn.sizes(["left", "right"])
    for queue in ("left", "right"):
        mine = [(job_id, delayed, priority) for job_id, q, delayed, priority in sent if q == queue]
        assert sizes[queue].delayed == sum(delayed for _, delayed, _ in mine)
        ready = await drain(store, queue, batch=1)
        assert {payload.uuid for payload in ready} == {job_id for job_id, delayed, _ in mine if not delayed}
        assert len(ready) == sizes[queue].pending
        priorities = [payload.priority for payload in ready]
        assert priorities == sorted(priorities, reverse=True)        # higher first, whatever the group
        assert priorities == [dict((j, p) for j, _, p in mine)[payload.uuid] for payload in ready]


async def test_every_job_of_a_group_is_announced_once_after_it_is_stored(store, monkeypatch):
    monkeypatch.setattr(events, "_listeners", {})        # this test's listener only, gone after it
    heard: list[tuple[str, str | None]] = []

    @listen(JobQueued)
    async def note(event: JobQueued) -> None:
        status = await store.conn.job_status(event.queue, event.job_id)      # stored before it is heard of
        heard.append((event.job_id, status.state if status else None))

    ids = await asyncio.gather(*(RecordingJob.dispatch(log="-", value=n) for n in range(50)))
    assert Counter(job_id for job_id, _ in heard) == Counter(ids)
    assert {state for _, state in heard} == {"pending"}


@pytest.mark.parametrize("n", [1, 3])
async def test_a_lone_dispatch_after_a_group_is_stored_at_once(store, n):
    """A group leaves nothing behind: a later dispatch, alone, pushes by itself and returns."""
    await asyncio.gather(*(RecordingJob.dispatch(log="-") for _ in range(30)))
    for _ in range(n):
        await asyncio.wait_for(RecordingJob.dispatch(log="-"), 10)
    assert (await store.conn.sizes(["default"]))["default"].pending == 30 + n


async def test_large_payloads_go_in_smaller_groups_and_are_all_stored_once(store):
    """A group is bounded in bytes too (1 MiB): 30 dispatches of ~200 kB each still store 30 jobs."""
    big = "x" * 200_000
    ids = await asyncio.gather(*(RecordingJob.dispatch(log="-", value=f"{n}{big}") for n in range(30)))
    stored = await drain(store, "default")
    assert Counter(payload.uuid for payload in stored) == Counter(ids)
    assert sorted(int(payload.data["value"][:-len(big)]) for payload in stored) == list(range(30))
