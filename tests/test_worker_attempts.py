"""Attempts in-process on each store: the locks the heartbeat renews (those of attempts whose code is
running, and only while it runs), and a stop that arrives while a reserve is in flight.

An attempt's context is kept for the heartbeat when its middleware takes a lock (most attempts take
none, and cost the worker nothing more); once the code has ended its locks are freed and it is
forgotten. In-process, on each store, with the worker's own Attempts.
"""
from __future__ import annotations

import asyncio

from core.worker import WorkerOptions
from core.worker.attempt import Attempts
from core.worker.outcome import Done
from core.worker.timeouts import LongTimeouts, Timeouts
from tests.jobs.control_jobs import OverlapJob


def attempts_for(store) -> Attempts:
    config = store.app.config
    attempts = Attempts(config, WorkerOptions(), Timeouts(hand_over=lambda *_: None, blocked=lambda _: None),
                        LongTimeouts(0, config.queue.visibility_timeout))
    attempts.bind(store.conn)
    return attempts


async def settle_nothing(*_) -> None:
    return None


async def test_a_lock_is_renewed_while_its_code_runs_and_freed_and_forgotten_when_it_ends(store, tmp_path):
    await OverlapJob.dispatch(log=str(tmp_path / "log"), key="device:7", seconds=0.5)
    reserved = await store.conn.reserve(["default"])
    attempts = attempts_for(store)
    attempt, refused = attempts.begin(reserved, slot=1)
    assert refused is None and attempts.held_locks() == []     # nothing held before the middleware ran

    running = asyncio.create_task(attempts.run(attempt, settle_nothing))
    for _ in range(200):
        if attempts.held_locks():
            break
        await asyncio.sleep(0.01)
    [(key, owner)] = attempts.held_locks()
    assert key.endswith("device:7") and owner == f"{reserved.id}:{reserved.token}"

    assert isinstance(await running, Done)
    assert attempts.held_locks() == []                          # forgotten once the code ended
    assert await store.conn.state.lock_renew([(key, owner)], 30) == [False]     # and freed in the store


async def test_an_attempt_without_middleware_is_never_kept_for_the_heartbeat(store, tmp_path):
    from tests.jobs.sample_jobs import RecordingJob

    await RecordingJob.dispatch(log=str(tmp_path / "events"))
    attempts = attempts_for(store)
    attempt, refused = attempts.begin(await store.conn.reserve(["default"]), slot=1)
    assert refused is None
    assert isinstance(await attempts.run(attempt, settle_nothing), Done)
    assert attempts.held_locks() == [] and attempts._contexts == {}


async def test_a_worker_told_to_stop_while_its_reserve_was_in_flight_starts_none_of_its_jobs(store, tmp_path):
    """"Stopping: no new jobs" holds for a reserve whose answer arrives after the stop (a store coming
    back from an outage answers the call the worker made before it was told): the jobs go back on the
    queue at once, and nothing runs."""
    from core.worker import Worker
    from tests.jobs.sample_jobs import RecordingJob

    events = tmp_path / "events"
    for _ in range(3):
        await RecordingJob.dispatch(log=str(events))
    worker = Worker(store.app, WorkerOptions(concurrency=3, sleep=0.05))
    conn = store.conn
    reserve_many, reserve_wait = conn.reserve_many, conn.reserve_wait

    async def stopped_during(call, *args, **kwargs):
        jobs = await call(*args, **kwargs)
        worker.stop("test: a stop during the reserve")
        return jobs

    conn.reserve_many = lambda *a, **k: stopped_during(reserve_many, *a, **k)      # type: ignore[method-assign]
    conn.reserve_wait = lambda *a, **k: stopped_during(reserve_wait, *a, **k)      # type: ignore[method-assign]
    try:
        await asyncio.wait_for(worker.run(), 30)
    finally:
        del conn.reserve_many, conn.reserve_wait
    assert not events.exists() and worker.processed == 0
    sizes = (await conn.sizes(["default"]))["default"].as_dict()
    assert sizes == {"pending": 3, "delayed": 0, "reserved": 0}
