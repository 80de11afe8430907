"""arq on Redis db 12: `enqueue_job` one at a time; the `arq` worker CLI with max_jobs=10.

arq's worker sleeps `poll_delay` (default 0.5 s) after every poll, which caps its throughput at
about max_jobs / poll_delay; the throughput run uses poll_delay=0.01 (as tuned in REFERENCE.md),
the latency run arq's default 0.5 s. Results are kept (keep_result default), as shipped.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from bench.harness import PEER_DB, REDIS_HOST, REDIS_PORT, Target, WorkerConfig
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

SETTINGS = RedisSettings(host=REDIS_HOST, port=REDIS_PORT, database=PEER_DB)


async def noop(ctx: dict) -> None:
    tick()


async def probe(ctx: dict, sent: float) -> None:
    record_latency(sent)


class WorkerSettings:
    functions = [noop, probe]
    redis_settings = SETTINGS
    max_jobs = 10
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))


class Arq(Target):
    name = "arq"
    version = package_version("arq")

    def __init__(self) -> None:
        self._runner = asyncio.Runner()
        self._pool: Any = None

    def connect(self) -> None:
        if self._pool is None:
            self._pool = self._runner.run(create_pool(SETTINGS))

    def teardown(self) -> None:
        if self._pool is not None:
            self._runner.run(self._pool.aclose())
        self._runner.close()
        super().teardown()

    def enqueue(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self._pool.enqueue_job("noop")
        self._runner.run(go())

    def send_probe(self) -> None:
        async def go() -> None:
            await self._pool.enqueue_job("probe", time.time())
        self._runner.run(go())

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig("max_jobs=10, poll_delay=0.01", [tool("arq"), "bench.peers.arq.WorkerSettings"],
                             {"BENCH_ARQ_POLL_DELAY": "0.01"})]

    def latency_worker(self) -> WorkerConfig:
        return WorkerConfig("max_jobs=10, poll_delay=0.5 (default)", [tool("arq"), "bench.peers.arq.WorkerSettings"])


def make_target() -> Arq:
    return Arq()
