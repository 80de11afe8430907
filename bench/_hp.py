"""Profile our hot paths on Redis under cProfile: `python bench/hotpaths.py worker|enqueue|bulk`.

- worker: N no-op jobs queued with dispatch_many, then one in-process Worker drains them
  (--concurrency C, --stop-when-empty); job log lines go to a file, as with `> worker.log`.
- enqueue: N sequential `await NoopJob.dispatch()`, after the same number of PINGs on the same
  client (the single-connection round-trip rate, for comparison).
- bulk: one `NoopJob.dispatch_many` of N jobs.

Prints the rate without the profiler, then the top functions by own time with it.
Settings: N (default 20000), C (default 10), APP_KEY (default empty: unsigned payloads),
PROFILE_REDIS_DB (default 10; flushed before each run).
"""
from __future__ import annotations

import asyncio
import cProfile
import io
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

N = int(os.environ.get("N", "20000"))
C = int(os.environ.get("C", "10"))
DB = os.environ.get("PROFILE_REDIS_DB", "10")
STAMP = Path(tempfile.mkdtemp()) / "stamp"
os.environ.update(QUEUE_CONNECTION="redis", REDIS_DB=DB, JOB_PACKAGES="bench.jobs", BENCH_JOBS=str(N),
                  BENCH_STAMP=str(STAMP), APP_KEY=os.environ.get("APP_KEY", ""))

from bootstrap.app import create_app  # noqa: E402
from core.log import configure_logging  # noqa: E402
from core.worker import Worker, WorkerOptions  # noqa: E402


async def worker(app) -> float:
    from bench.jobs import NoopJob

    await NoopJob.dispatch_many([{} for _ in range(N)])
    configure_logging(app.config)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(open(STAMP.parent / "worker.log", "w"))
    started = time.perf_counter()
    await Worker(app, WorkerOptions(concurrency=C, stop_when_empty=True)).run()
    return N / (time.perf_counter() - started)


async def enqueue(app) -> float:
    from bench.jobs import NoopJob

    client = (await app.queue.connection()).client
    started = time.perf_counter()
    for _ in range(N):
        await client.ping()
    print(f"single-connection PING round trips: {N / (time.perf_counter() - started):,.0f}/s")
    started = time.perf_counter()
    for _ in range(N):
        await NoopJob.dispatch()
    return N / (time.perf_counter() - started)


async def bulk(app) -> float:
    from bench.jobs import NoopJob

    started = time.perf_counter()
    await NoopJob.dispatch_many([{} for _ in range(N)])
    return N / (time.perf_counter() - started)


async def run(scenario, profiler: cProfile.Profile | None) -> float:
    import redis

    redis.Redis(port=6400, db=int(DB)).flushdb()
    async with create_app() as app:
        await (await app.queue.connection()).client.ping()
        if profiler:
            profiler.enable()
        try:
            return await scenario(app)
        finally:
            if profiler:
                profiler.disable()


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "worker"
    scenario = {"worker": worker, "enqueue": enqueue, "bulk": bulk}[name]
    rate = asyncio.run(run(scenario, None))
    print(f"{name}: {N:,} jobs, {rate:,.0f} jobs/s" + (f" at concurrency {C}" if name == "worker" else ""))
    profiler = cProfile.Profile()
    asyncio.run(run(scenario, profiler))
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(45)
    print(out.getvalue())


if __name__ == "__main__":
    main()
