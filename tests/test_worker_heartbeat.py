"""The heartbeat renews reservations whatever job code does to the event loop (SPEC §5).

Found by the chaos suite: four jobs reserved in one call, each blocking the loop for 70% of its
timeout, ran one after another in one pass of the loop (5.6 s) while the heartbeat, on that loop,
could not renew; at QUEUE_VISIBILITY_TIMEOUT=4 the later ones lapsed and a second worker ran them too.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import pytest

from tests.jobs.heartbeat_jobs import LoopBlockerJob
from tests.jobs.sample_jobs import read_events
from tests.jobs.worker_audit_jobs import SiblingJob

pytestmark = pytest.mark.slow

BLOCKERS = 4
BLOCK = 1.4         # ~70% of LoopBlockerJob.timeout (1.95 s, the largest accepted at visibility 4)


async def test_jobs_blocking_the_loop_in_turn_never_lapse_a_reservation(store, monkeypatch, tmp_path):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "4")     # for the workers started below
    log = str(tmp_path / "events")
    ids = [await LoopBlockerJob.dispatch(log=log, seconds=BLOCK) for _ in range(BLOCKERS)]
    ids.append(await SiblingJob.dispatch(log=log, seconds=1.0).on_queue("heartbeat"))
    first = store.start_worker("--queue", "heartbeat", "--concurrency", str(BLOCKERS), "--sleep", "0.05",
                               "--stop-when-empty")
    second = None
    try:
        until = time.monotonic() + 20
        while not read_events(log):     # the first worker took the four blockers in one reserve
            assert first.poll() is None and time.monotonic() < until, store.worker_logs()
            await asyncio.sleep(0.02)
        second = store.start_worker("--queue", "heartbeat", "--sleep", "0.05")
        assert await asyncio.to_thread(first.wait, 60) == 0, store.worker_logs()
        os.killpg(second.pid, signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 30) == 0, store.worker_logs()
    finally:
        store.kill(first)
        if second is not None:
            store.kill(second)
    events = read_events(log)
    out = store.worker_logs()
    starts = Counter(e["job_id"] for e in events if e["event"] == "start")
    assert starts == Counter(ids), f"a job started twice, or never:\n{out}"
    assert Counter(e["job_id"] for e in events if e["event"] == "end") == Counter(ids), out
    assert "taken over" not in out and "reservation lost" not in out and "exceeded" not in out, out
    assert (await store.conn.sizes(["heartbeat"]))["heartbeat"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await (await store.app.queue.failed_store()).all() == []
