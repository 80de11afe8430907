"""Redis restarted under a connection and under a running worker: they reconnect and lose no job."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from redis import exceptions as redis_errors

from bootstrap.app import create_app
from tests.conftest import ROOT
from tests.jobs.contract_jobs import RecordRun, read_runs
from tests.redis_server import LocalRedis

pytestmark = pytest.mark.slow


@pytest.fixture
def restartable_redis(monkeypatch):
    """A private server that keeps its data across restarts (append-only file, fsync always)."""
    server = LocalRedis("--appendonly", "yes", "--appendfsync", "always").start()
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    monkeypatch.setenv("REDIS_PORT", str(server.port))
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    yield server
    server.cleanup()


def raw(n: int) -> str:
    return json.dumps({"uuid": str(uuid.uuid4()), "job": "x.Y", "n": n})


async def test_a_connection_reconnects_after_a_restart_and_loses_no_job(restartable_redis):
    async with create_app() as app:
        conn = await app.queue.connection()
        await conn.push_many("restart", [raw(n) for n in range(5)])
        held = await conn.reserve(["restart"])

        restartable_redis.stop()
        with pytest.raises(redis_errors.ConnectionError):     # down: an error, quickly, not a hang
            await asyncio.wait_for(conn.reserve(["restart"]), 10)
        restartable_redis.start()

        taken = [await conn.reserve(["restart"]) for _ in range(4)]
        assert all(taken) and await conn.reserve(["restart"]) is None
        assert [await conn.acknowledge(job) for job in taken] == [True] * 4
        await asyncio.sleep(3.3)                              # the reservation held across the restart lapses
        back = await conn.reserve(["restart"])
        assert (back.id, back.attempts) == (held.id, 2)
        assert await conn.acknowledge(held) is False
        assert await conn.acknowledge(back) is True
        assert (await conn.sizes(["restart"]))["restart"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}


async def test_a_running_worker_logs_the_outage_reconnects_and_goes_on(restartable_redis, tmp_path):
    runs, log = str(tmp_path / "runs"), tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "redis", "--queue", "contract",
                                   "--sleep", "0.5"], cwd=ROOT, env=dict(os.environ), stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        async with create_app():
            first = await RecordRun.dispatch(path=runs)
            await wait_for(lambda: len(read_runs(runs)) == 1, 15)

            restartable_redis.stop()
            await asyncio.sleep(1.5)
            restartable_redis.start()
            second = await RecordRun.dispatch(path=runs)
            await wait_for(lambda: len(read_runs(runs)) == 2, 20)
        assert read_runs(runs) == [(first, 1), (second, 1)]
        output = log.read_text()
        assert output.count(f"Lost the connection to Redis at 127.0.0.1:{restartable_redis.port}: ") == 1, output
        assert output.count(f"Connection to Redis at 127.0.0.1:{restartable_redis.port} is back after ") == 1, output
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


async def wait_for(predicate, timeout: float) -> None:
    until = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < until, "timed out"
        await asyncio.sleep(0.05)
