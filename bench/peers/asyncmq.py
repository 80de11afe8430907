"""AsyncMQ on its Redis backend (db 12): `await noop.enqueue(backend=...)` one at a time, and
`Queue.add_bulk` (its bulk call, which adds one job at a time, so it is called with 500 jobs at a
time within the budget); its worker command `asyncmq worker start bench --concurrency C` (C = 1,
its default, 10 and 100), with its settings class (ASYNCMQ_SETTINGS_MODULE) as shipped apart from
the backend. It does not block on Redis: an idle worker polls, backing off from 0.05 s to 2 s.
"""
from __future__ import annotations

import asyncio
import time

from asyncmq.backends.redis import RedisBackend
from asyncmq.conf.global_settings import Settings as AsyncMQSettings
from asyncmq.queues import Queue
from asyncmq.tasks import task

from bench.harness import PEER_DB, Target, WorkerConfig, gather_fill, redis_url
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

QUEUE = "bench"


class Settings(AsyncMQSettings):
    backend = RedisBackend(redis_url(PEER_DB))
    tasks = ["bench.peers.asyncmq"]


@task(queue=QUEUE)
async def noop() -> None:
    tick()


@task(queue=QUEUE)
async def probe(sent: float) -> None:
    record_latency(sent)


class AsyncMQ(Target):
    name = "asyncmq"
    version = package_version("asyncmq")
    enqueue_label = "await noop.enqueue()"
    bulk_label = "Queue.add_bulk (one add per job)"
    bulk_chunk = 500

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self.backend = Settings.backend
        self.queue = Queue(QUEUE, backend=self.backend)

    def env(self) -> dict[str, str]:
        return {"ASYNCMQ_SETTINGS_MODULE": "bench.peers.asyncmq.Settings"}

    def teardown(self) -> None:
        super().teardown()
        self._runner.close()

    def enqueue(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await noop.enqueue(backend=self.backend)
        self._runner.run(go())

    def enqueue_bulk(self, n: int) -> None:
        self._runner.run(self.queue.add_bulk([{"task_id": noop.task_id} for _ in range(n)]))

    def fill(self, n: int) -> int:
        return gather_fill(self._runner, lambda: noop.enqueue(backend=self.backend), n)

    def send_probe(self) -> None:
        self._runner.run(probe.enqueue(sent=time.time(), backend=self.backend))

    def _worker(self, c: int) -> WorkerConfig:
        default = " (default)" if c == 1 else ""
        return WorkerConfig(f"worker start --concurrency {c}{default}",
                            [tool("asyncmq"), "worker", "start", QUEUE, "--concurrency", str(c)], concurrency=c)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker(c) for c in (1, 10, 100)]

    def latency_worker(self) -> WorkerConfig:
        return self._worker(1)


def make_target() -> AsyncMQ:
    return AsyncMQ()
