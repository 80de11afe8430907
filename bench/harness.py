"""The scenarios every target (ours on one connection, or one peer) goes through, the same way.

(a) Sequential enqueue: up to N no-op jobs pushed one at a time, one awaited call after another,
    from one process, the client connected before the clock starts; rate = jobs / elapsed. It
    stops early at ENQUEUE_BUDGET seconds (slow targets), and the rate is over what was pushed.
(b) Bulk enqueue, where the target has a bulk call: N jobs in one call (a bulk call that pushes
    one job at a time, RouteMQ's, in calls of 500 within ENQUEUE_BUDGET).
(c) Worker throughput, once per worker configuration (concurrency 1, 10, 100 where the target
    has them): with the jobs queued, the worker is started as a user would start it; rate =
    jobs / (last job's end - first job's start), both taken by the jobs (probe.tick), so start-up
    and shutdown are excluded. A worker still busy DRAIN_BUDGET seconds after its first job is
    stopped and the rate is over the jobs it ran (marked partial). The jobs queued by (a) and (b)
    are reused; other fills use the fastest call the target has (not timed, within FILL_BUDGET).
(d) Idle dispatch-to-start latency: a running, idle worker; a probe job is dispatched carrying the
    time.time() taken just before the dispatch call, and its handler pushes now - sent to a Redis
    list (probe.record_latency); the driver waits for it, pauses 5-10 ms so the worker is idle
    again, and repeats: up to LATENCY_SAMPLES samples or LATENCY_BUDGET seconds, after 3 warm-ups.
    Then LONG_IDLE more after pauses of 1-1.5 s, longer than a usual poll or block interval, which
    is where a worker that stops listening between waits shows it.
(e) Worker peak RSS: VmHWM of the worker's processes, sampled during (c) (procs.Workers).
Extra rows (scenario f): worker configurations a target adds, e.g. 4 processes side by side.

Run one target: `python -m bench.harness MODULE [ARGS]`; MODULE has `make_target(*ARGS)`.
The last line printed is the result as JSON (bench/run.py reads it).
"""
from __future__ import annotations

import importlib
import json
import os
import random
import signal
import sys
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import WorkerConfig, Workers, clear_stamps, read_stamps

# BENCH_REDIS_PORT: a private redis-server for the bench (two benches on one machine never share dbs).
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("BENCH_REDIS_PORT") or 6379)
OUR_DB, PEER_DB = 11, 12          # never 9: the test suite's
N = int(os.environ.get("BENCH_N") or 20_000)
# Time budgets (seconds) that keep the default run near ten minutes; slow targets are measured
# over what fits, and the report marks such figures.
ENQUEUE_BUDGET = 4.0
FILL_BUDGET = 5.0
DRAIN_BUDGET = 6.0            # counted from the first job, so a slow start-up costs no measuring time
LATENCY_SAMPLES = 500
LATENCY_BUDGET = 5.0
LONG_IDLE = 2

__all__ = ["WorkerConfig", "Target", "Result", "NotRunnable", "run", "drain", "gather_fill", "redis_url", "N"]


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@dataclass
class Result:
    name: str
    version: str = ""
    jobs: int = 0                                # N asked for
    enqueue: float | None = None                 # jobs/s, sequential
    enqueue_jobs: int = 0                        # how many (a) pushed within its budget
    bulk: float | None = None                    # jobs/s, one bulk call
    bulk_jobs: int = 0
    bulk_label: str = ""
    enqueue_label: str = ""
    throughput: list[dict] = field(default_factory=list)    # one drain() dict per worker configuration
    extra: list[dict] = field(default_factory=list)         # drain() dicts of extra rows (scenario f)
    latency_label: str = ""
    latency_ms: list[float] = field(default_factory=list)   # sorted samples
    long_idle_ms: list[float] = field(default_factory=list)  # sorted, after 1-1.5 s pauses
    errors: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase, to budget the run


class Target(ABC):
    """One queue system on one store. Methods are synchronous; async clients run their own loop."""

    name: str = ""
    version: str = ""
    redis_db: int = PEER_DB
    jobs: int = N
    latency_budget: float = LATENCY_BUDGET
    enqueue_label: str = ""       # the call (a) makes
    bulk_label: str = ""          # set when enqueue_bulk is implemented
    bulk_chunk: int = 0           # 0: (b) is one call of N; else calls of this many, within ENQUEUE_BUDGET

    def env(self) -> dict[str, str]:
        """Environment of the worker processes (besides the BENCH_* variables)."""
        return {}

    def setup(self) -> None:
        self.clear()

    def teardown(self) -> None:
        self.clear()

    def connect(self) -> None:
        """Open the client before a clock starts."""
        return None     # a hook: targets whose client needs opening override it

    def clear(self) -> None:
        """Remove every queued job and result: flush this target's Redis db."""
        import redis

        redis.Redis.from_url(redis_url(self.redis_db)).flushdb()

    @abstractmethod
    def enqueue(self, n: int) -> None:
        """Push n no-op jobs, one call at a time."""

    def enqueue_bulk(self, n: int) -> None:
        raise NotImplementedError

    def fill(self, n: int) -> int:
        """Queue up to n no-op jobs as fast as the target's own API allows (not timed); returns how many."""
        if self.bulk_label:
            self.enqueue_bulk(n)
            return n
        done, _ = chunked(self.enqueue, n, FILL_BUDGET)
        return done

    @abstractmethod
    def send_probe(self) -> None:
        """Dispatch one probe job carrying sent=time.time(), taken just before the dispatch call."""

    @abstractmethod
    def throughput_workers(self) -> list[WorkerConfig]: ...

    @abstractmethod
    def latency_worker(self) -> WorkerConfig: ...

    def extra_workers(self) -> list[WorkerConfig | dict]:
        """More configurations, each run on N freshly queued jobs (scenario f); a dict is a row that
        cannot run here, with a "note" saying why."""
        return []


# -- scenarios -------------------------------------------------------------------------------------

def chunked(fn: Callable[[int], None], n: int, budget: float, chunk: int = 200) -> tuple[int, float]:
    """Call fn(chunk) until n jobs are pushed or `budget` seconds have passed: (jobs, seconds)."""
    started = time.perf_counter()
    done = 0
    while done < n and time.perf_counter() - started < budget:
        step = min(chunk, n - done)
        fn(step)
        done += step
    return done, time.perf_counter() - started


def gather_fill(runner: Any, call: Callable[[], Any], n: int) -> int:
    """Queue up to n jobs with an async client, 100 calls in flight at a time (not timed), within
    FILL_BUDGET seconds; returns how many."""
    import asyncio

    async def go() -> int:
        done, deadline = 0, time.monotonic() + FILL_BUDGET
        while done < n and time.monotonic() < deadline:
            step = min(100, n - done)
            await asyncio.gather(*(call() for _ in range(step)))
            done += step
        return done
    return runner.run(go())


def drain(target: Target, config: WorkerConfig, n: int, budget: float = DRAIN_BUDGET) -> dict[str, Any]:
    """Start the worker(s) on n queued no-op jobs; jobs/s from the first job's start to the last's end."""
    stamp = str(Path(tempfile.gettempdir()) / f"bench-stamp-{os.getpid()}")
    clear_stamps(stamp)
    row: dict[str, Any] = {"label": config.label, "concurrency": config.concurrency, "copies": config.copies,
                           "of": n, "jobs": 0, "rate": None, "partial": False}
    workers = Workers(config, {**target.env(), "BENCH_JOBS": str(n), "BENCH_STAMP": stamp,
                               "BENCH_REDIS_URL": redis_url(target.redis_db)})
    try:
        stamps = _wait(workers, config, stamp, n, budget, row)
        workers.sample_memory()
    finally:
        stopping = time.monotonic()
        workers.stop()
        row["stop_s"] = round(time.monotonic() - stopping, 1)
        row.update(workers.memory())
    if stamps:
        first, last, count = stamps
        row.update(jobs=count, rate=count / (last - first) if last > first else None)
    clear_stamps(stamp)
    return row


def _wait(workers: Workers, config: WorkerConfig, stamp: str, n: int, budget: float,
          row: dict[str, Any]) -> tuple[float, float, int] | None:
    """Until the worker has run n jobs (or exited, if it exits when empty), or `budget` seconds
    have passed since its first job (row["partial"]); samples its memory meanwhile."""
    started = first_seen = time.monotonic()
    next_sample = 0.0
    while True:
        now = time.monotonic()
        if now >= next_sample:
            workers.sample_memory()
            next_sample = now + 0.25
        stamps = read_stamps(stamp)
        if stamps and "startup_s" not in row:
            row["startup_s"] = round(now - started, 1)
            first_seen = now
        if not workers.running():
            if config.exits_when_empty and not workers.died():
                return read_stamps(stamp)     # final stamps are written at exit
            raise RuntimeError(workers.died() or f"worker stopped before the last job: {workers.tail()}")
        if not config.exits_when_empty and stamps and stamps[2] >= n:
            return stamps
        if not stamps and now - started > 30:
            raise RuntimeError(f"no job run after {now - started:.0f}s: {workers.tail()}")
        if stamps and now - first_seen > budget:
            row["partial"] = True
            return stamps
        time.sleep(0.02)


def measure_latency(target: Target) -> tuple[list[float], list[float]]:
    import redis

    from bench.probe import LATENCY_KEY

    # a socket timeout longer than the BLPOP's: redis-py 8 would otherwise give up on a probe that
    # waits for a peer's poll (procrastinate's 5 s when it misses a notification)
    client = redis.Redis.from_url(redis_url(target.redis_db), socket_timeout=30)
    target.connect()      # before the worker starts: both would create a fresh store's tables at once
    workers = Workers(target.latency_worker(), {**target.env(), "BENCH_REDIS_URL": redis_url(target.redis_db)})
    samples: list[float] = []
    long_idle: list[float] = []

    def sample(pause: float) -> float:
        time.sleep(pause)
        target.send_probe()
        popped = client.blpop([LATENCY_KEY], timeout=10)
        if popped is None:
            raise RuntimeError(f"probe job not run within 10s: {workers.tail()}")
        return float(popped[1]) * 1000

    try:
        for _ in range(3):    # the first also waits for the worker to start
            warm_up(target, client, workers)
        deadline = time.monotonic() + target.latency_budget
        while len(samples) < LATENCY_SAMPLES and time.monotonic() < deadline:
            samples.append(sample(random.uniform(0.005, 0.01)))
        for _ in range(LONG_IDLE):
            long_idle.append(sample(random.uniform(1.0, 1.5)))
    finally:
        workers.stop()
    return sorted(samples), sorted(long_idle)


def warm_up(target: Target, client: Any, workers: Workers) -> None:
    """One probe job through the started worker (its latency discarded): the worker runs, the
    store's tables exist, and this process's client is connected."""
    from bench.probe import LATENCY_KEY

    target.connect()
    target.send_probe()
    deadline = time.monotonic() + 30
    while client.blpop([LATENCY_KEY], timeout=1) is None:
        if not workers.running() or time.monotonic() > deadline:
            raise RuntimeError(f"probe job not run: {workers.died() or workers.tail()}")


def run(target: Target) -> Result:
    result = Result(name=target.name, version=target.version, jobs=target.jobs, bulk_label=target.bulk_label,
                    enqueue_label=target.enqueue_label)
    n = target.jobs

    def timed(phase: str, fn: Callable) -> Any:
        started = time.monotonic()
        try:
            return _attempt(result, phase, fn)
        finally:
            result.seconds[phase] = round(time.monotonic() - started, 1)

    target.setup()
    try:
        queued = timed("enqueue", lambda: _sequential(target, result, n)) or 0
        configs = target.throughput_workers()
        for i, config in enumerate(configs):
            if i == 1 and target.bulk_label:
                target.clear()
                queued = timed("bulk", lambda: _bulk(target, result, n)) or 0
            elif i > 0 or not queued:
                target.clear()
                queued = timed(f"fill for {config.label}", lambda: target.fill(n)) or 0
            row = (timed(f"worker {config.label}", lambda config=config, queued=queued: drain(target, config, queued))
                   if queued else None)
            result.throughput.append(row or {"label": config.label, "concurrency": config.concurrency, "rate": None})
        target.clear()
        if target.bulk_label and result.bulk is None:
            timed("bulk", lambda: _bulk(target, result, n))
            target.clear()
        latency = target.latency_worker()
        result.latency_label = latency.label
        result.latency_ms, result.long_idle_ms = timed("latency", lambda: measure_latency(target)) or ([], [])
        for config in target.extra_workers():
            if isinstance(config, dict):        # a row that cannot run here, with its reason
                result.extra.append(config)
                continue
            target.clear()
            queued = timed(f"fill for {config.label}", lambda: target.fill(n)) or 0
            row = (timed(f"worker {config.label}", lambda config=config, queued=queued: drain(target, config, queued))
                   if queued else None)
            result.extra.append(row or {"label": config.label, "concurrency": config.concurrency,
                                        "copies": config.copies, "rate": None})
    finally:
        _attempt(result, "teardown", target.teardown)
    return result


def _sequential(target: Target, result: Result, n: int) -> int:
    target.connect()
    done, elapsed = chunked(target.enqueue, n, ENQUEUE_BUDGET)
    result.enqueue, result.enqueue_jobs = done / elapsed, done
    return done


def _bulk(target: Target, result: Result, n: int) -> int:
    target.connect()
    done, elapsed = chunked(target.enqueue_bulk, n, ENQUEUE_BUDGET, target.bulk_chunk or n)
    result.bulk, result.bulk_jobs = done / elapsed, done
    return done


def _attempt(result: Result, what: str, fn: Callable):
    try:
        return fn()
    except Exception as exc:
        result.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return None


class NotRunnable(Exception):
    """Raised by make_target when the target cannot run in this build or on this machine: the
    run reports it as not run, with the message as the reason."""


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run.py's timeout: finally blocks stop workers
    module = importlib.import_module(argv[0])
    from bench import harness      # this module runs as __main__: the targets raise bench.harness's class

    try:
        target: Target = module.make_target(*argv[1:])
    except harness.NotRunnable as exc:
        print(json.dumps({"missing": str(exc)}), flush=True)     # run.py adds the name
        return
    result = run(target)
    print(json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
