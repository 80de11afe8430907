"""RouteMQ's queue on Redis (db 12) or on MySQL (its database driver, SQLAlchemy + aiomysql, database
bench_routemq): `await dispatch(NoopJob())` one at a time and `queue.bulk(jobs)` (its bulk call,
one push per job); its worker CLI, `routemq queue-work --sleep 1`, which runs one job at a time
(RouteMQ has no concurrency setting) and polls every --sleep seconds when the queue is empty
(default 3; 1 is the lowest it takes). LOG_LEVEL=WARNING: at its default INFO it logs every job.
On MySQL, scenario (f) adds 4 such workers side by side. The workers run in a scratch directory
(its CLI writes a .env where it starts) through bench.peers.routemq_worker.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import PEER_DB, REDIS_HOST, REDIS_PORT, Target, WorkerConfig
from bench.peers._venv import package_version

MYSQL_DATABASE = "bench_routemq"


def settings(store: str) -> dict[str, str]:
    common = {"ROUTEMQ_JOB_DIRECTORY": "bench.peers.routemq_jobs", "LOG_LEVEL": "WARNING",
              "ENABLE_TSDB": "false", "ENABLE_TELEMETRY": "false"}
    if store == "mysql":     # any DB_CONNECTION turns its database on, so it is set only here
        return {**common, "QUEUE_CONNECTION": "database", "ENABLE_REDIS": "false", "ENABLE_MYSQL": "true",
                "DB_CONNECTION": "mysql", "DB_HOST": "127.0.0.1", "DB_PORT": "3306", "DB_NAME": MYSQL_DATABASE,
                "DB_USER": "root", "DB_PASS": "", "DB_AUTO_CREATE_TABLES": "true"}
    return {**common, "QUEUE_CONNECTION": "redis", "ENABLE_REDIS": "true", "ENABLE_MYSQL": "false",
            "REDIS_HOST": REDIS_HOST, "REDIS_PORT": str(REDIS_PORT), "REDIS_DB": str(PEER_DB)}


class RouteMQ(Target):
    enqueue_label = "await dispatch(NoopJob())"
    bulk_label = "queue.bulk (one push per job)"
    bulk_chunk = 500

    def __init__(self, store: str) -> None:
        self.store = store
        self.name = f"routemq ({store})"
        self.version = package_version("routemq")
        self.latency_budget = 4.0       # it polls every --sleep 1 s: a few samples say it all
        self.scratch = tempfile.mkdtemp(prefix="bench-routemq-")
        (Path(self.scratch) / ".env").write_text("")      # so its CLI writes none of its own
        os.environ.update(self.env())                      # the producer reads the same settings
        self._runner = asyncio.Runner()
        self._connected = False

    def env(self) -> dict[str, str]:
        return settings(self.store)

    # -- store ---------------------------------------------------------------------------------

    def setup(self) -> None:
        if self.store == "mysql":
            _mysql(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}", f"CREATE DATABASE {MYSQL_DATABASE}")
        self.clear()

    def clear(self) -> None:
        super().clear()
        if self.store == "mysql":
            _mysql(f"USE {MYSQL_DATABASE}", "DROP TABLE IF EXISTS queue_jobs", "DROP TABLE IF EXISTS queue_failed_jobs")
            self.connect()
            from routemq.model import Model

            self._runner.run(Model.create_tables())

    def teardown(self) -> None:
        super().clear()
        if self._connected:
            self._runner.run(self._close())
        self._runner.close()
        if self.store == "mysql":
            _mysql(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}")
        for path in Path(self.scratch).glob("*"):
            path.unlink()
        os.rmdir(self.scratch)

    def connect(self) -> None:
        if not self._connected:
            self._runner.run(self._open())
            self._connected = True

    async def _open(self) -> None:
        if self.store == "mysql":
            from routemq.model import Model
            from routemq.settings import load_database_connection_settings

            Model.configure(load_database_connection_settings().url)
        else:
            from routemq.redis_manager import RedisManager

            if not await RedisManager().initialize():
                raise RuntimeError("RouteMQ could not connect to Redis")

    async def _close(self) -> None:
        if self.store == "mysql":
            from routemq.model import Model

            await Model.cleanup()
        else:
            from routemq.redis_manager import RedisManager

            await RedisManager().disconnect()

    # -- dispatching -----------------------------------------------------------------------------

    def enqueue(self, n: int) -> None:
        from routemq.queue.queue_manager import dispatch

        from bench.peers.routemq_jobs.jobs import NoopJob

        async def go() -> None:
            for _ in range(n):
                await dispatch(NoopJob())
        self._runner.run(go())

    def enqueue_bulk(self, n: int) -> None:
        from routemq.queue.queue_manager import queue

        from bench.peers.routemq_jobs.jobs import NoopJob

        self._runner.run(queue.bulk([NoopJob() for _ in range(n)]))

    def fill(self, n: int) -> int:
        from bench.harness import FILL_BUDGET, chunked

        self.connect()
        done, _ = chunked(self.enqueue_bulk, n, FILL_BUDGET, chunk=500)
        return done

    def send_probe(self) -> None:
        from routemq.queue.queue_manager import dispatch

        from bench.peers.routemq_jobs.jobs import ProbeJob

        job = ProbeJob()
        job.sent = time.time()
        self._runner.run(dispatch(job))

    # -- workers ---------------------------------------------------------------------------------

    def _worker(self, copies: int = 1) -> WorkerConfig:
        argv = [sys.executable, "-m", "bench.peers.routemq_worker", "queue-work", "--sleep", "1"]
        label = "queue-work --sleep 1" if copies == 1 else f"{copies} processes x queue-work --sleep 1"
        # several workers that never exit: each must report every job (probe.tick)
        env = {"BENCH_STAMP_EVERY": "1"} if copies > 1 else {}
        return WorkerConfig(label, argv, env=env, concurrency=1, copies=copies, cwd=self.scratch)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker()]

    def latency_worker(self) -> WorkerConfig:
        return self._worker()

    def extra_workers(self) -> list[WorkerConfig | dict]:
        return [self._worker(4)] if self.store == "mysql" else []


def _mysql(*statements: str) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()


def make_target(store: str) -> RouteMQ:
    return RouteMQ(store)
