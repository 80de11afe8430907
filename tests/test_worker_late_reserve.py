"""A reserve answer the worker reads only after the reservation it carries has lapsed.

Found by the Redis chaos run: a worker's event loop blocked by job code (several blockers back to
back) while a reserve call was in flight. The store reserved the job at once, but the worker read
the answer seconds later; the heartbeat could not renew a job it did not know of yet, the
reservation lapsed, and the worker started attempt 1 of a job that a reserve (its own next one,
or another worker's) had already taken again as attempt 2: one job run twice, no kill to explain it.
"""
from __future__ import annotations

import asyncio

import pytest

from bootstrap.app import create_app
from core.worker import Worker, WorkerOptions, heartbeat_interval
from tests.conftest import use_store
from tests.jobs.sample_jobs import RecordingJob, read_events

VISIBILITY = 2
LATE = VISIBILITY + 1.2      # past the reservation (database times are whole seconds), within the claim's life


@pytest.fixture(params=["sqlite", "redis"])
def short_visibility(request, monkeypatch) -> str:
    return use_store(request, monkeypatch, request.param, VISIBILITY)


def read_late(conn, monkeypatch, then=None) -> None:
    """The worker's reserve calls return their first jobs only after the reservation has lapsed
    (as when job code blocks the loop while the answer waits in the socket); `then` runs meanwhile."""
    late = []

    def delayed(real):
        async def call(*args, **kwargs):
            result = await real(*args, **kwargs)
            if result and not late:
                late.append(result)
                await asyncio.sleep(LATE)
                if then is not None:
                    await then()
            return result
        return call

    monkeypatch.setattr(conn, "reserve_many", delayed(conn.reserve_many))
    monkeypatch.setattr(conn, "reserve_wait", delayed(conn.reserve_wait))


async def test_a_job_taken_again_before_the_worker_read_its_reserve_answer_is_not_started(short_visibility,
                                                                                          monkeypatch, tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app, create_app() as other_app:
        conn = await app.queue.connection()
        other = await other_app.queue.connection()
        await RecordingJob.dispatch(log=log)
        taken = []

        async def second_worker_takes_it() -> None:
            taken.append(await other.reserve(["default"]))

        read_late(conn, monkeypatch, second_worker_takes_it)
        await asyncio.wait_for(Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05)).run(), 20)
        assert taken[0] is not None and taken[0].attempts == 2, "the lapsed reservation was taken again"
        assert read_events(log) == [], "the worker ran a job whose reservation another worker held"
        assert await other.acknowledge(taken[0])


async def test_a_job_whose_lapsed_reservation_nobody_took_still_runs_once(short_visibility, monkeypatch, tmp_path):
    assert heartbeat_interval(VISIBILITY) < LATE < 2 * VISIBILITY
    log = str(tmp_path / "events")
    async with create_app() as app:
        conn = await app.queue.connection()
        await RecordingJob.dispatch(log=log)
        read_late(conn, monkeypatch)
        await asyncio.wait_for(Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05)).run(), 20)
        assert [e["attempts"] for e in read_events(log)] == [1]
        size = (await conn.sizes(["default"]))["default"]
        assert (size.pending, size.delayed, size.reserved) == (0, 0, 0)
