"""What SPEC 10's events cost the worker: `python bench/events.py`.

One in-process Worker drains N no-op jobs on Redis (queued with dispatch_many, --concurrency C,
--stop-when-empty), in three variants, interleaved round by round in one run so the machine's
load falls on each alike:

- without:  the worker's emit calls compiled out (each WorkerEvents method replaced by a function
            that does nothing; what is left is the bare call, ~50 ns a job)
- events:   the code as it ships, with no listener registered (the SPEC's "costs nothing")
- listener: one async listener on every job event, which does nothing (the price of listening)

Prints each variant's median rate and the ratios events/without and listener/without.
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
from core.log import configure_logging  # noqa: E402
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


async def drain(variant: str) -> float:
    import redis

    from bench.jobs import NoopJob

    redis.Redis(db=int(DB)).flushdb()
    use(variant)
    async with create_app() as app:
        await NoopJob.dispatch_many([{} for _ in range(N)])
        started = time.perf_counter()
        await Worker(app, WorkerOptions(concurrency=C, stop_when_empty=True)).run()
        return N / (time.perf_counter() - started)


def quiet_logs() -> None:
    """Job log lines go to a file, as with `> worker.log`: the terminal is not what is measured."""
    from core.config import load_config

    configure_logging(load_config())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(open(STAMP.parent / "worker.log", "w"))


def main() -> None:
    quiet_logs()
    variants = ("without", "events", "listener")
    rates: dict[str, list[float]] = {v: [] for v in variants}
    asyncio.run(drain("events"))                         # warm-up: imports, scripts loaded, caches
    for _ in range(ROUNDS):
        for variant in variants:
            rates[variant].append(asyncio.run(drain(variant)))
    median = {v: statistics.median(r) for v, r in rates.items()}
    for v in variants:
        print(f"{v:9s} {median[v]:9,.0f} jobs/s  (rounds: {', '.join(f'{r:,.0f}' for r in rates[v])})")
    print(f"events/without   = {median['events'] / median['without']:.3f}   (no listener: the SPEC's 'nothing')")
    print(f"listener/without = {median['listener'] / median['without']:.3f}   (one no-op listener on every job event)")
    print(f"{N:,} no-op jobs per round on Redis db {DB}, concurrency {C}, {ROUNDS} rounds, median")


if __name__ == "__main__":
    main()
