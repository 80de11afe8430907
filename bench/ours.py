"""Our framework on one connection: sqlite (a fresh file), mysql (database bench_jobs), pgsql (database
bench_ours on 127.0.0.1:5432, as the PostgreSQL peers get theirs) or redis (db 11). A build without
DB_CONNECTION=pgsql reports "ours (pgsql)" as not run.

Enqueue: `await NoopJob.dispatch()` one after another, and `NoopJob.dispatch_many([{}] * n)`, in
one process on one application (`create_app()`), the connection opened before the clock starts.
Workers: `python main.py queue:work --stop-when-empty --concurrency C` (C = 1, 10 and 100),
started after the jobs are queued; latency: `python main.py queue:work` with its default options
(--sleep 1, --concurrency 1). Scenario (f): on SQLite and MySQL, 4 such workers side by side at
--concurrency 10 (and on PostgreSQL); on Redis, `queue:work --processes 2` where the option exists. Payloads are
unsigned (APP_KEY empty), as the peers' are. Job log lines go to a file, as they would under a
process manager.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import pg
from bench.harness import N, OUR_DB, REDIS_HOST, REDIS_PORT, NotRunnable, Target, WorkerConfig

# BENCH_DB_SUFFIX (letters, digits, _): appended to both database names, so two benches on one
# server (two checkouts) never drop each other's tables mid-run, as BENCH_REDIS_PORT for Redis.
DB_SUFFIX = "".join(c for c in os.environ.get("BENCH_DB_SUFFIX", "") if c.isalnum() or c == "_")
MYSQL_DATABASE = "bench_jobs" + DB_SUFFIX
PGSQL_DATABASE = "bench_ours" + DB_SUFFIX
# Without wake-up the database workers poll (--sleep 1): a few samples say it all.
LATENCY_BUDGET = {"redis": 8.0, "sqlite": 4.0, "mysql": 4.0, "pgsql": 4.0}
NO_PGSQL = "this build has no pgsql connection (DB_CONNECTION=pgsql)"
PROCESSES_MISSING = "not available: queue:work has no --processes option in this version"


class Ours(Target):
    redis_db = OUR_DB

    def __init__(self, connection: str) -> None:
        if connection == "pgsql" and not has_pgsql():
            raise NotRunnable(NO_PGSQL)
        self.connection = connection
        self.name = f"ours ({connection})"
        self.version = _git_head()
        self.jobs = N
        self.latency_budget = LATENCY_BUDGET[connection]
        self.bulk_label = "dispatch_many"
        self.enqueue_label = "await NoopJob.dispatch()"
        self.sqlite = Path(tempfile.mkdtemp(prefix="bench-sqlite-")) / "bench.sqlite"
        os.environ.update(self.env())       # the in-process application reads the same settings
        self._runner = asyncio.Runner()
        self._app: Any = None

    def env(self) -> dict[str, str]:
        server = {"mysql": {"DB_DATABASE": MYSQL_DATABASE, "DB_PORT": "3306", "DB_USERNAME": "root", "DB_PASSWORD": ""},
                  "pgsql": {"DB_DATABASE": PGSQL_DATABASE, "DB_PORT": str(pg.PORT), "DB_USERNAME": pg.USER,
                            "DB_PASSWORD": pg.PASSWORD}}.get(self.connection)
        return {
            "QUEUE_CONNECTION": "redis" if self.connection == "redis" else "database",
            "DB_CONNECTION": self.connection if server else "sqlite",
            "DB_DATABASE": str(self.sqlite), "DB_HOST": "127.0.0.1", "DB_PORT": "3306", "DB_USERNAME": "root",
            "DB_PASSWORD": "", **(server or {}),
            "REDIS_HOST": REDIS_HOST, "REDIS_PORT": str(REDIS_PORT), "REDIS_DB": str(OUR_DB),
            "REDIS_URL": "", "REDIS_PASSWORD": "", "REDIS_CLUSTER": "false", "REDIS_PREFIX": "queues:",
            "JOB_PACKAGES": "bench.jobs", "APP_KEY": "", "LOG_FILE": "", "QUEUE_VISIBILITY_TIMEOUT": "90",
        }

    # -- store ---------------------------------------------------------------------------------

    def setup(self) -> None:
        self.clear()

    def teardown(self) -> None:
        self._close_app()
        self._runner.close()
        super().clear()
        if self.connection == "mysql":
            _mysql(f"DROP DATABASE IF EXISTS {MYSQL_DATABASE}")
        if self.connection == "pgsql":
            pg.drop(PGSQL_DATABASE)
        for path in self.sqlite.parent.glob("*"):
            path.unlink()
        self.sqlite.parent.rmdir()

    def clear(self) -> None:
        """A fresh store: Redis db flushed, SQLite file, MySQL or PostgreSQL database made anew."""
        self._close_app()
        super().clear()
        fresh_database(self.connection, PGSQL_DATABASE if self.connection == "pgsql" else MYSQL_DATABASE)
        for path in self.sqlite.parent.glob("*"):
            path.unlink()

    # -- dispatching -----------------------------------------------------------------------------

    def _call(self, coro_fn: Any, *args: Any) -> Any:
        return self._runner.run(self._with_app(coro_fn, *args))

    async def _with_app(self, coro_fn: Any, *args: Any) -> Any:
        if self._app is None:
            from bootstrap.app import create_app

            self._app = await create_app().__aenter__()
            await self._app.queue.connection()      # connect (and migrate) before any clock starts
        return await coro_fn(*args)

    def _close_app(self) -> None:
        if self._app is not None:
            app, self._app = self._app, None
            self._runner.run(app.__aexit__(None, None, None))

    def connect(self) -> None:
        self._call(asyncio.sleep, 0)

    def enqueue(self, n: int) -> None:
        self._call(_dispatch_sequential, n)

    def enqueue_bulk(self, n: int) -> None:
        self._call(_dispatch_many, n)

    def send_probe(self) -> None:
        self._call(_dispatch_probe)

    # -- workers ---------------------------------------------------------------------------------

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig(f"--concurrency {c}", self._work("--stop-when-empty", "--concurrency", str(c)),
                             exits_when_empty=True, concurrency=c) for c in (1, 10, 100)]

    def extra_workers(self) -> list[WorkerConfig | dict]:
        if self.connection != "redis":
            return [WorkerConfig("4 processes x --concurrency 10",
                                 self._work("--stop-when-empty", "--concurrency", "10"),
                                 exits_when_empty=True, concurrency=10, copies=4)]
        label = "--processes 2 --concurrency 10"
        if not has_processes_option():
            return [{"label": label, "concurrency": 10, "copies": 2, "rate": None, "note": PROCESSES_MISSING}]
        return [WorkerConfig(label, self._work("--stop-when-empty", "--processes", "2", "--concurrency", "10"),
                             exits_when_empty=True, concurrency=10, copies=1)]

    def latency_worker(self) -> WorkerConfig:
        return WorkerConfig("queue:work defaults (--sleep 1, --concurrency 1)", self._work())

    @staticmethod
    def _work(*options: str) -> list[str]:
        return [sys.executable, "main.py", "queue:work", *options]


async def _dispatch_sequential(n: int) -> None:
    from bench.jobs import NoopJob

    for _ in range(n):
        await NoopJob.dispatch()


async def _dispatch_many(n: int) -> None:
    from bench.jobs import NoopJob

    await NoopJob.dispatch_many([{} for _ in range(n)])


async def _dispatch_probe() -> None:
    from bench.jobs import ProbeJob

    await ProbeJob.dispatch(sent=time.time())


def has_pgsql() -> bool:
    """Whether this build has DB_CONNECTION=pgsql (issue 14, on branch pgsql until it is merged)."""
    from core.dialects import DIALECTS

    return "pgsql" in DIALECTS


def has_processes_option() -> bool:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "main.py", "queue:work", "--help"], cwd=root, capture_output=True,
                         text=True, timeout=60)
    return "--processes" in out.stdout


def fresh_database(connection: str, name: str) -> None:
    """The MySQL or PostgreSQL database `name` dropped (PostgreSQL: whatever is still connected to it
    closed) and made anew; nothing for the other stores."""
    if connection == "mysql":
        _mysql(f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    elif connection == "pgsql":
        pg.recreate(name)


def _mysql(*statements: str) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
    try:
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        conn.close()


def _git_head() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short=8", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def make_target(connection: str) -> Ours:
    return Ours(connection)
