"""arq on Redis db 12: `enqueue_job` one at a time (arq has no bulk call); the `arq` worker CLI
with max_jobs 1, 10 and 100 (jobs at once; 10 is its default).

arq's worker sleeps `poll_delay` (default 0.5 s) after every poll, which caps its throughput at
about max_jobs / poll_delay; the throughput runs use poll_delay=0.01 (as tuned in REFERENCE.md),
the latency run arq's defaults. Results are kept (keep_result default), as shipped.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from bench.harness import PEER_DB, REDIS_HOST, REDIS_PORT, Target, WorkerConfig, gather_fill
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
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", "10"))
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.5"))


class Arq(Target):
    name = "arq"
    version = package_version("arq")
    enqueue_label = "await pool.enqueue_job()"

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

    def fill(self, n: int) -> int:
        self.connect()
        return gather_fill(self._runner, lambda: self._pool.enqueue_job("noop"), n)

    def send_probe(self) -> None:
        async def go() -> None:
            await self._pool.enqueue_job("probe", time.time())
        self._runner.run(go())

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig(f"max_jobs={c}, poll_delay=0.01", [tool("arq"), "bench.peers.arq.WorkerSettings"],
                             {"BENCH_ARQ_POLL_DELAY": "0.01", "BENCH_ARQ_MAX_JOBS": str(c)}, concurrency=c)
                for c in (1, 10, 100)]

    def latency_worker(self) -> WorkerConfig:
        return WorkerConfig("max_jobs=10, poll_delay=0.5 (defaults)", [tool("arq"), "bench.peers.arq.WorkerSettings"],
                            concurrency=10)


def make_target() -> Arq:
    return Arq()
