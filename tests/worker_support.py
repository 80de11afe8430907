"""Helpers for tests that run `python main.py queue:work` processes against a `store` (tests/conftest.py):
waiting on what the jobs record, stopping workers, and reading the store's state and clock."""
from __future__ import annotations

import asyncio
import os
import signal
import time

from core.queue.state_redis import RedisState
from tests.jobs.sample_jobs import read_events

EPSILON = 1e-6       # float rounding of two clock readings, not a timing allowance


async def until(predicate, seconds: float, what: str, store) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{store.worker_logs()}"
        await asyncio.sleep(0.05)


async def stop(store, *workers) -> None:
    """SIGTERM each worker and wait for its graceful exit (0)."""
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
    for worker in workers:
        assert await asyncio.to_thread(worker.wait, 30) == 0, store.worker_logs()


def events(log, kind: str) -> list[dict]:
    return [e for e in read_events(log) if e["event"] == kind]


def log_lines(store, word: str, job_id: str) -> list[str]:
    """The worker log lines of one outcome (DONE, RETRY, RELEASE, SKIP, FAIL, RUNNING) of one job."""
    return [line for line in store.worker_logs().splitlines()
            if line.split()[2:3] == [word] and f"[{job_id}]" in line]


async def failed_rows(store) -> dict:
    return {row.uuid: row for row in await (await store.app.queue.failed_store()).all()}


async def empty(store, queue: str = "default") -> bool:
    size = (await store.conn.sizes([queue])).get(queue)
    return size is None or size.as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}


async def clock(state) -> float:
    if isinstance(state, RedisState):
        seconds, micros = await state.client.time()
        return seconds + micros / 1_000_000
    return float((await state.db.fetchone(f"SELECT {state.db.dialect.clock}"))[0])
