"""The outcomes no job returns yet (Release, Delete), settled on each store as the worker would.

Later features (a job's release(), middleware) return them; what the user sees must already hold:
a released job waits its delay on the queue and is not failed, a deleted one is gone without a
failed_jobs row, and each leaves one log line.
"""
from __future__ import annotations

import logging
import threading
import time

from core.outage import OutageLog
from core.worker import Attempt, Delete, Release
from core.worker.settle import Settler
from core.worker.timeouts import Timeouts
from tests.jobs.sample_jobs import RecordingJob

log = logging.getLogger("worker")


async def settle(store, outcome) -> str:
    """Reserve the one job queued, settle it with `outcome`, and return its label."""
    reserved = await store.conn.reserve(["default"])
    assert reserved is not None
    attempt = Attempt(reserved, slot=1, started=time.monotonic(), label=f"RecordingJob [{reserved.id}]")
    timeouts = Timeouts(hand_over=lambda *_: None, blocked=lambda _: None)
    settler = Settler(store.conn, OutageLog(log, store.conn, []), timeouts, threading.Lock(), [], 30)
    await settler.settle(attempt, outcome)
    return attempt.label


def lines(caplog, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(word)]


async def test_a_released_job_waits_its_delay_on_the_queue_and_is_not_failed(store, tmp_path, caplog):
    await RecordingJob.dispatch(log=str(tmp_path / "events"))
    with caplog.at_level(logging.INFO, logger="worker"):
        label = await settle(store, Release(30, "rate limited"))
    sizes = await store.conn.sizes(["default"])
    assert sizes["default"].as_dict() == {"pending": 0, "delayed": 1, "reserved": 0}
    assert await (await store.app.queue.failed_store()).all() == []
    [line] = lines(caplog, "RELEASE")
    assert line.startswith(f"RELEASE {label} ") and line.endswith("ms (rate limited) again in 30s")


async def test_a_deleted_job_is_gone_without_a_failed_row(store, tmp_path, caplog):
    await RecordingJob.dispatch(log=str(tmp_path / "events"))
    with caplog.at_level(logging.INFO, logger="worker"):
        label = await settle(store, Delete("its model is gone"))
    sizes = await store.conn.sizes(["default"])
    assert sizes.get("default") is None or sizes["default"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await (await store.app.queue.failed_store()).all() == []
    [line] = lines(caplog, "SKIP")
    assert line.startswith(f"SKIP    {label} ") and line.endswith("ms (its model is gone)")
