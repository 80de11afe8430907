"""SAQ on Redis db 12: `queue.enqueue` one at a time (SAQ has no bulk call); the `saq` worker CLI
(one process) with concurrency 1, 10 and 100 (jobs at once; 10 is its default, used for latency)."""
from __future__ import annotations

import asyncio
import os
import time

from saq import Queue

from bench.harness import PEER_DB, Target, WorkerConfig, gather_fill, redis_url
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

queue = Queue.from_url(redis_url(PEER_DB))


async def noop(ctx: dict) -> None:
    tick()


async def probe(ctx: dict, *, sent: float) -> None:
    record_latency(sent)


settings = {"queue": queue, "functions": [noop, probe],
            "concurrency": int(os.environ.get("BENCH_SAQ_CONCURRENCY", "10"))}


class Saq(Target):
    name = "saq"
    version = package_version("saq")
    enqueue_label = "await queue.enqueue()"

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._connected = False

    def connect(self) -> None:
        if not self._connected:
            self._runner.run(queue.connect())
            self._connected = True

    def teardown(self) -> None:
        self._runner.run(queue.disconnect())
        self._runner.close()
        super().teardown()

    def enqueue(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await queue.enqueue("noop")
        self._runner.run(go())

    def fill(self, n: int) -> int:
        self.connect()
        return gather_fill(self._runner, lambda: queue.enqueue("noop"), n)

    def send_probe(self) -> None:
        async def go() -> None:
            await queue.enqueue("probe", sent=time.time())
        self._runner.run(go())

    def _worker(self, c: int) -> WorkerConfig:
        default = " (default)" if c == 10 else ""
        return WorkerConfig(f"concurrency={c}{default}", [tool("saq"), "bench.peers.saq.settings"],
                            {"BENCH_SAQ_CONCURRENCY": str(c)}, concurrency=c)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker(c) for c in (1, 10, 100)]

    def latency_worker(self) -> WorkerConfig:
        return self._worker(10)


def make_target() -> Saq:
    return Saq()
