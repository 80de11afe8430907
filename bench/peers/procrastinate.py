"""procrastinate on PostgreSQL (database bench_procrastinate, made anew for each fill, its schema
applied): `await noop.defer_async()` one at a time and `noop.batch_defer_async(*jobs)` (its bulk
call); its worker command `procrastinate --app ... worker --concurrency C --one-shot` (C = 1, its
default, 10 and 100; --one-shot stops it once the queue is empty), LISTEN/NOTIFY on (its default)
and jobs kept after they succeed (its default). `--log-level warning`: at its default, info, it
logs two lines a job. Latency: the worker as shipped (concurrency 1, LISTEN/NOTIFY, polling every
5 s besides).
"""
from __future__ import annotations

import time

from procrastinate import App, PsycopgConnector

from bench import pg
from bench.harness import WorkerConfig
from bench.peers._pg import PgTarget
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

DATABASE = "bench_procrastinate"
app = App(connector=PsycopgConnector(conninfo=pg.dsn(DATABASE)))


@app.task(name="noop")
async def noop() -> None:
    tick()


@app.task(name="probe")
async def probe(sent: float) -> None:
    record_latency(sent)


class Procrastinate(PgTarget):
    name = "procrastinate (pgsql)"
    version = f"{package_version('procrastinate')}, {package_version('psycopg')}"
    enqueue_label = "await noop.defer_async()"
    bulk_label = "batch_defer_async"
    database = DATABASE

    async def open(self) -> None:
        await app.open_async()      # an awaitable that is also a context manager

    async def close(self) -> None:
        await app.close_async()

    async def prepare(self) -> None:
        await app.schema_manager.apply_schema_async()

    def enqueue(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await noop.defer_async()
        self._runner.run(go())

    def enqueue_bulk(self, n: int) -> None:
        self._runner.run(noop.batch_defer_async(*({} for _ in range(n))))

    def send_probe(self) -> None:
        self._runner.run(probe.defer_async(sent=time.time()))

    @staticmethod
    def _work(*options: str) -> list[str]:
        return [tool("procrastinate"), "--app", "bench.peers.procrastinate.app", "--log-level", "warning",
                "worker", *options]

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig(f"--concurrency {c}{' (default)' if c == 1 else ''} --one-shot",
                             self._work("--concurrency", str(c), "--one-shot"), exits_when_empty=True, concurrency=c)
                for c in (1, 10, 100)]

    def latency_worker(self) -> WorkerConfig:
        return WorkerConfig("worker defaults (--concurrency 1, LISTEN/NOTIFY, polling 5 s)", self._work())


def make_target() -> Procrastinate:
    return Procrastinate()
