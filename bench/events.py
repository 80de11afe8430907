"""What SPEC 10's events cost the worker: `python bench/events.py`.

One in-process Worker drains N no-op jobs on Redis (queued with dispatch_many, --concurrency C,
--stop-when-empty), in three variants, interleaved round by round in one run so the machine's
load falls on each alike:

- without:  the worker's emit calls compiled out (each WorkerEvents method replaced by a function
            that does nothing; what is left is the bare call, ~50 ns a job)
- events:   the code as it ships, with no listener registered (the SPEC's "costs nothing")
- listener: one async listener on every job event, which does nothing (the price of listening)

Prints each variant's median rate, and the worker process's CPU time per job (steadier than the
rate on a machine shared with other work: another process's load does not count), with the
ratios events/without and listener/without taken round by round (medians).
Settings: N (default 5000), C (default 10), ROUNDS (default 5), PROFILE_REDIS_DB (default 10;
flushed before each round).
"""
from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

N = int(os.environ.get("N", "5000"))
C = int(os.environ.get("C", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "5"))
DB = os.environ.get("PROFILE_REDIS_DB", "10")
STAMP = Path(tempfile.mkdtemp()) / "stamp"
os.environ.update(QUEUE_CONNECTION="redis", REDIS_DB=DB, JOB_PACKAGES="bench.jobs", BENCH_JOBS=str(N),
                  BENCH_STAMP=str(STAMP), APP_KEY="", APP_LISTENERS="")

from bootstrap.app import create_app  # noqa: E402
from core import events  # noqa: E402
from core.events import JobEvent  # noqa: E402
from core.worker import Worker, WorkerOptions  # noqa: E402
from core.worker.announce import WorkerEvents  # noqa: E402

SHIPPED = {name: getattr(WorkerEvents, name) for name in
           ("processing", "processed", "released", "failed", "deleted", "starting", "stopping")}


def nothing(*args, **kwargs) -> None:
    return None


async def nothing_async(*args, **kwargs) -> None:
    return None


async def heard(event: JobEvent) -> None:
    return None


def use(variant: str) -> None:
    """Put the worker's emit calls and listeners as `variant` has them."""
    for name, method in SHIPPED.items():
        if variant == "without":
            method = nothing_async if name == "stopping" else nothing
        setattr(WorkerEvents, name, method)
    events.forget(heard)
    if variant == "listener":
        events.listen(JobEvent)(heard)


async def drain(variant: str) -> tuple[float, float]:
    """(jobs per second, CPU microseconds per job) of one worker draining N no-op jobs."""
    import redis

    from bench.jobs import NoopJob

    redis.Redis(db=int(DB)).flushdb()
    use(variant)
    async with create_app() as app:
        quiet_logs()        # each application configures logging as it starts
        await NoopJob.dispatch_many([{} for _ in range(N)])
        started, cpu = time.perf_counter(), time.process_time()
        await Worker(app, WorkerOptions(concurrency=C, stop_when_empty=True)).run()
        return N / (time.perf_counter() - started), (time.process_time() - cpu) / N * 1e6


LOG = open(STAMP.parent / "worker.log", "w")


def quiet_logs() -> None:
    """Job log lines go to a file, as with `> worker.log`: the terminal is not what is measured."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(LOG)


def main() -> None:
    variants = ("without", "events", "listener")
    runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    asyncio.run(drain("events"))                         # warm-up: imports, scripts loaded, caches
    for _ in range(ROUNDS):
        for variant in variants:
            runs[variant].append(asyncio.run(drain(variant)))
    for v in variants:
        rates, cpus = [r for r, _ in runs[v]], [c for _, c in runs[v]]
        print(f"{v:9s} {statistics.median(rates):9,.0f} jobs/s  {statistics.median(cpus):6.1f} us CPU/job  "
              f"(rates: {', '.join(f'{r:,.0f}' for r in rates)})")
    for v, what in (("events", "no listener: the SPEC's 'nothing'"),
                    ("listener", "one no-op listener on every job event")):
        rate = statistics.median(a[0] / b[0] for a, b in zip(runs[v], runs["without"]))
        cpu = statistics.median(a[1] / b[1] for a, b in zip(runs[v], runs["without"]))
        print(f"{v}/without: rate x{rate:.3f}, CPU per job x{cpu:.3f}   ({what})")
    print(f"{N:,} no-op jobs per round on Redis db {DB}, concurrency {C}, {ROUNDS} rounds; "
          "medians of each round's ratio")


if __name__ == "__main__":
    main()
