"""SAQ on Redis db 12: `queue.enqueue` one at a time; the `saq` worker CLI with concurrency 10."""
from __future__ import annotations

import asyncio
import time

from saq import Queue

from bench.harness import PEER_DB, Target, WorkerConfig, redis_url
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

queue = Queue.from_url(redis_url(PEER_DB))


async def noop(ctx: dict) -> None:
    tick()


async def probe(ctx: dict, *, sent: float) -> None:
    record_latency(sent)


settings = {"queue": queue, "functions": [noop, probe], "concurrency": 10}


class Saq(Target):
    name = "saq"
    version = package_version("saq")

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

    def send_probe(self) -> None:
        async def go() -> None:
            await queue.enqueue("probe", sent=time.time())
        self._runner.run(go())

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig("concurrency=10 (default)", [tool("saq"), "bench.peers.saq.settings"])]

    def latency_worker(self) -> WorkerConfig:
        return self.throughput_workers()[0]


def make_target() -> Saq:
    return Saq()
