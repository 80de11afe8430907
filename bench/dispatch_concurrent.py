"""Dispatch throughput at concurrency C: C coroutines each `await NoopJob.dispatch()` in a loop,
no MQTT, on Redis (BENCH_REDIS_PORT, db 0; its `default` queue cleared before and after) or a database
(BENCH_DISPATCH_STORE=sqlite|mysql|pgsql: a temporary SQLite file, or the database `bench_dispatch`,
made when missing).

    .venv/bin/python bench/dispatch_concurrent.py 1 10 100       jobs/s and CPU us/job per concurrency
    BENCH_PROFILE=1 .venv/bin/python bench/dispatch_concurrent.py 20     cProfile of the run, top 30

BENCH_DISPATCH_N (default 4000) jobs per run. One line per concurrency:
`C <c> <jobs/s> <cpu us/job>` (the CPU is this process's, user + system, over the run). Every run
checks that N jobs were stored. bench/dispatch_ab.py runs this file from two checkouts, interleaved.
"""
from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(os.environ.get("BENCH_DISPATCH_ROOT") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

N = int(os.environ.get("BENCH_DISPATCH_N") or 4000)
STORE = os.environ.get("BENCH_DISPATCH_STORE") or "redis"
DATABASE = "bench_dispatch"
if STORE == "redis":
    os.environ.update(QUEUE_CONNECTION="redis", REDIS_HOST="127.0.0.1", REDIS_URL="", REDIS_CLUSTER="",
                      REDIS_PORT=os.environ.get("BENCH_REDIS_PORT") or "6379", REDIS_DB="0")
else:
    sqlite = Path(tempfile.mkdtemp(prefix="bench-dispatch-")) / "q.sqlite"
    os.environ.update(QUEUE_CONNECTION="database", DB_CONNECTION=STORE, DB_HOST="127.0.0.1",
                      DB_PORT="5432" if STORE == "pgsql" else "3306",
                      DB_USERNAME="postgres" if STORE == "pgsql" else "root", DB_PASSWORD="",
                      DB_DATABASE=str(sqlite) if STORE == "sqlite" else DATABASE)
os.environ.update(JOB_PACKAGES="bench.jobs", APP_KEY="", LOG_FILE="")

from bootstrap.app import create_app  # noqa: E402


async def create_database() -> None:
    if STORE == "pgsql":
        import asyncpg

        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="test")
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f"CREATE DATABASE {DATABASE}")
        await conn.close()
    elif STORE == "mysql":
        import aiomysql

        conn = await aiomysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        conn.close()


async def one(concurrency: int, profiler: cProfile.Profile | None) -> tuple[float, float]:
    from bench.jobs import NoopJob

    async with create_app() as app:
        conn = await app.queue.connection()
        await conn.clear("default")
        await NoopJob.dispatch()            # connected, scripts loaded, statements prepared
        each = N // concurrency

        async def dispatcher() -> None:
            for _ in range(each):
                await NoopJob.dispatch()

        if profiler:
            profiler.enable()
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(dispatcher() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profiler:
            profiler.disable()
        stored = (await conn.sizes(["default"]))["default"].pending
        if stored != each * concurrency + 1:
            raise SystemExit(f"stored {stored}, expected {each * concurrency + 1}")
        await conn.clear("default")
    return each * concurrency / elapsed, cpu / (each * concurrency) * 1e6


def main() -> None:
    profile = bool(os.environ.get("BENCH_PROFILE"))
    asyncio.run(create_database())
    for c in [int(arg) for arg in sys.argv[1:]] or [1, 10, 100]:
        profiler = cProfile.Profile() if profile else None
        rate, cpu = asyncio.run(one(c, profiler))
        print(f"C {c} {rate:.0f} {cpu:.1f}", flush=True)
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
            print(out.getvalue())


if __name__ == "__main__":
    main()
