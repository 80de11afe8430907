"""dbjobq on SQLite (its SQLAlchemy storage, `sqlite+aiosqlite`, a fresh file per fill): `await
queue.enqueue(noop, {})` one at a time (dbjobq has no bulk call); its `Worker` with its defaults
(one job at a time, `poll_interval=1.0`, backing off by 1.5x to `max_poll_interval=10.0` while the
queue is empty), started by `python -m bench.peers.dbjobq` as its README starts one: dbjobq has
no worker command, an application runs `await Worker(queue).start()` itself.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from dbjobq import JobQueue, Worker
from dbjobq.storage import SQLAlchemyStorage

from bench.harness import Target, WorkerConfig
from bench.peers._venv import package_version
from bench.probe import record_latency, tick

DATABASE_ENV = "BENCH_DBJOBQ_FILE"


async def noop(data: dict) -> None:
    tick()


async def probe(data: dict) -> None:
    record_latency(data["sent"])


def _url(path: str) -> str:
    return f"sqlite+aiosqlite:///{path}"


class Dbjobq(Target):
    name = "dbjobq (sqlite)"
    version = f"{package_version('dbjobq')}, {package_version('SQLAlchemy')}, {package_version('aiosqlite')}"
    enqueue_label = "await queue.enqueue(noop, {})"

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-dbjobq-"))
        self.path = self.folder / "jobs.db"
        self._runner = asyncio.Runner()
        self._storage: SQLAlchemyStorage | None = None
        self._queue: JobQueue | None = None

    def env(self) -> dict[str, str]:
        return {DATABASE_ENV: str(self.path)}

    def clear(self) -> None:
        """A fresh file with dbjobq's tables, and the Redis db of the latency probe flushed."""
        super().clear()
        self._close()
        for path in self.folder.glob("*"):
            path.unlink()
        self.connect()

    def teardown(self) -> None:
        super().teardown()
        self._close()
        self._runner.close()
        for path in self.folder.glob("*"):
            path.unlink()
        self.folder.rmdir()

    def connect(self) -> None:
        if self._queue is None:
            self._storage = SQLAlchemyStorage(_url(str(self.path)))
            self._runner.run(self._storage.initialize())
            self._queue = JobQueue(self._storage)

    def _close(self) -> None:
        if self._storage is not None:
            self._runner.run(self._storage.close())
        self._storage = self._queue = None

    def enqueue(self, n: int) -> None:
        self.connect()
        queue = self._queue
        assert queue is not None

        async def go() -> None:
            for _ in range(n):
                await queue.enqueue(noop, {})
        self._runner.run(go())

    def send_probe(self) -> None:
        self.connect()
        assert self._queue is not None
        self._runner.run(self._queue.enqueue(probe, {"sent": time.time()}))

    def _worker(self) -> WorkerConfig:
        return WorkerConfig("Worker defaults (one job at a time, poll_interval=1.0 backing off to 10.0)",
                            [sys.executable, "-m", "bench.peers.dbjobq"], concurrency=1)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker()]

    def latency_worker(self) -> WorkerConfig:
        return self._worker()


async def _work() -> None:
    storage = SQLAlchemyStorage(_url(os.environ[DATABASE_ENV]))
    worker = Worker(JobQueue(storage))      # its SIGTERM handler stops it after the current job
    await worker.start()
    assert worker._task is not None
    await worker._task


def make_target() -> Dbjobq:
    return Dbjobq()


if __name__ == "__main__":
    asyncio.run(_work())
