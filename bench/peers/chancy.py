"""Chancy on PostgreSQL (database bench_chancy, made anew for each fill and migrated): `await
chancy.push(job)` one at a time and `chancy.push_many(jobs)` (its bulk call: one transaction per
1,000 jobs). Its worker, `Worker(chancy)` as `chancy worker start` runs it, started by
`python -m bench.peers.chancy C [eager]`, which first declares the queue `bench` (upsert) with
its AsyncExecutor (the one for async jobs) at concurrency C, as `chancy queue declare` would:
the CLI's declare has no executor option. For (c), `eager_polling=True`, the setting its docs give
for a queue where jobs are continuously available: without it the worker fetches the next jobs
only on a push notification or after `polling_interval` (5 s). Latency: the queue's defaults
(LISTEN/NOTIFY on, `polling_interval=5`, no eager polling, the executor's default concurrency).
Its default plugins (leadership, pruner, recovery, metrics, workflows) as shipped; its log at
WARNING: at its default, INFO, it logs every job it pulls.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time

from chancy import Chancy, Job, Queue, Worker

from bench import pg
from bench.harness import WorkerConfig
from bench.peers._pg import PgTarget
from bench.peers._venv import package_version
from bench.probe import record_latency, tick

DATABASE = "bench_chancy"
QUEUE = "bench"


def _logger() -> logging.Logger:
    log = logging.getLogger("bench.chancy")
    log.setLevel(logging.WARNING)
    log.addHandler(logging.StreamHandler())
    return log


chancy = Chancy(pg.dsn(DATABASE), log=_logger())


async def noop() -> None:
    tick()


async def probe(sent: float) -> None:
    record_latency(sent)


NOOP = Job.from_func(noop, queue=QUEUE)


class ChancyTarget(PgTarget):
    name = "chancy (pgsql)"
    version = f"{package_version('chancy')}, {package_version('psycopg')}"
    enqueue_label = "await chancy.push(job)"
    bulk_label = "push_many"
    database = DATABASE

    async def open(self) -> None:
        await chancy.__aenter__()

    async def close(self) -> None:
        await chancy.__aexit__(None, None, None)

    async def prepare(self) -> None:
        await chancy.migrate()

    def enqueue(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await chancy.push(NOOP)
        self._runner.run(go())

    def enqueue_bulk(self, n: int) -> None:
        async def go() -> None:
            async for _ in chancy.push_many([NOOP] * n):
                pass
        self._runner.run(go())

    def send_probe(self) -> None:
        self._runner.run(chancy.push(Job.from_func(probe, queue=QUEUE, kwargs={"sent": time.time()})))

    @staticmethod
    def _worker(c: int | None, eager: bool) -> WorkerConfig:
        label = (f"AsyncExecutor, concurrency={c}" if c else "AsyncExecutor, defaults") + \
                (", eager_polling=True" if eager else " (LISTEN/NOTIFY, polling_interval=5)")
        argv = [sys.executable, "-m", "bench.peers.chancy", str(c or 0)] + (["eager"] if eager else [])
        return WorkerConfig(label, argv, concurrency=c or 1)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker(c, eager=True) for c in (1, 10, 100)]

    def latency_worker(self) -> WorkerConfig:
        return self._worker(None, eager=False)


async def _work(concurrency: int, eager: bool) -> None:
    async with chancy:
        await chancy.declare(Queue(QUEUE, concurrency=concurrency or None, executor=Chancy.Executor.Async,
                                   eager_polling=eager), upsert=True)
        async with Worker(chancy) as worker:
            await worker.wait_for_shutdown()


def make_target() -> ChancyTarget:
    return ChancyTarget()


if __name__ == "__main__":
    asyncio.run(_work(int(sys.argv[1]), sys.argv[2:] == ["eager"]))
