"""taskiq with taskiq-redis on db 12, with either of its two Redis brokers:

- `list`: ListQueueBroker (LPUSH, and BRPOP in the worker; a job is gone once popped),
- `stream`: RedisStreamBroker (XADD, and XREADGROUP in a consumer group with XACK after the job;
  its default xread_count 100 and xread_block 2000 ms).

`await task.kiq()` one at a time (taskiq has no bulk call); the `taskiq worker` CLI with
--workers 1 (one worker process beside its supervisor) and --max-async-tasks 1, 10 and 100
(100 is its default, used for latency). No result backend (the default), logging as shipped.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from taskiq_redis import ListQueueBroker, RedisStreamBroker

from bench.harness import PEER_DB, Target, WorkerConfig, gather_fill, redis_url
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

list_broker = ListQueueBroker(url=redis_url(PEER_DB), queue_name="bench")
stream_broker = RedisStreamBroker(url=redis_url(PEER_DB), queue_name="bench-stream")
BROKERS: dict[str, Any] = {"list": list_broker, "stream": stream_broker}
LABELS = {"list": "ListQueueBroker", "stream": "RedisStreamBroker"}


async def noop() -> None:
    tick()


async def probe(sent: float) -> None:
    record_latency(sent)


TASKS = {kind: (broker.task(task_name="noop")(noop), broker.task(task_name="probe")(probe))
         for kind, broker in BROKERS.items()}


class Taskiq(Target):
    enqueue_label = "await task.kiq()"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"taskiq ({kind})"
        self.version = f"{package_version('taskiq')}, {package_version('taskiq-redis')}"
        self.broker = BROKERS[kind]
        self.noop, self.probe = TASKS[kind]
        self._runner = asyncio.Runner()
        self._started = False

    def connect(self) -> None:
        if not self._started:
            self._runner.run(self.broker.startup())
            self._started = True
        if self.kind == "stream":      # the consumer group must exist before the jobs are added
            self._runner.run(self.broker._declare_consumer_group())

    def clear(self) -> None:
        super().clear()
        if self._started:
            self.connect()

    def teardown(self) -> None:
        super().teardown()
        if self._started:
            self._runner.run(self.broker.shutdown())
        self._runner.close()

    def enqueue(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.noop.kiq()
        self._runner.run(go())

    def fill(self, n: int) -> int:
        self.connect()
        return gather_fill(self._runner, self.noop.kiq, n)

    def send_probe(self) -> None:
        async def go() -> None:
            await self.probe.kiq(sent=time.time())
        self._runner.run(go())

    def _worker(self, c: int) -> WorkerConfig:
        default = " (default)" if c == 100 else ""
        return WorkerConfig(f"{LABELS[self.kind]}, --workers 1 --max-async-tasks {c}{default}",
                            [tool("taskiq"), "worker", f"bench.peers.taskiq:{self.kind}_broker", "--workers", "1",
                             "--max-async-tasks", str(c)], concurrency=c)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker(c) for c in (1, 10, 100)]

    def latency_worker(self) -> WorkerConfig:
        return self._worker(100)


def make_target(kind: str) -> Taskiq:
    return Taskiq(kind)
