"""The scenarios every target (ours on one connection, or one peer) goes through, the same way.

1. Sequential enqueue: `jobs` no-op jobs pushed one at a time, one awaited call after another,
   from one process; rate = jobs / elapsed (the client is connected before the clock starts).
2. Bulk enqueue, where the target has a bulk call: the same number in one call.
3. Worker throughput: with `jobs` no-op jobs queued, one worker process is started as a user would
   start it; rate = jobs / (last job's end - first job's start), both taken by the jobs (probe.tick),
   so start-up and shutdown are excluded. The jobs queued by steps 1 and 2 are reused.
4. Idle dispatch-to-start latency: a running, idle worker; a probe job is dispatched carrying the
   time.time() taken just before the dispatch call, and its handler pushes now - sent to a Redis
   list (probe.record_latency); the driver waits for it, pauses 20-50 ms so the worker is idle
   again, and repeats: up to `latency_samples` samples or `latency_budget` seconds, after 3 warm-ups.
   Then `long_idle_samples` more after pauses of 1-2 s, longer than the usual poll or block
   interval, which is where a worker that stops listening between waits shows it.

Run one target: `python -m bench.harness MODULE [ARGS]`; MODULE has `make_target(*ARGS)`.
The last line printed is the result as JSON (bench/run.py reads it).
"""
from __future__ import annotations

import importlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
OUR_DB, PEER_DB = 11, 12          # never 9: the test suite's


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@dataclass(frozen=True)
class WorkerConfig:
    label: str                    # how the worker was configured, for the table
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    exits_when_empty: bool = False


@dataclass
class Result:
    name: str
    version: str = ""
    jobs: int = 0
    enqueue: float | None = None                 # jobs/s, sequential
    bulk: float | None = None                    # jobs/s, one bulk call
    bulk_label: str = ""
    throughput: list[tuple[str, float | None]] = field(default_factory=list)   # (config, jobs/s)
    latency_label: str = ""
    latency_ms: list[float] = field(default_factory=list)                     # sorted samples
    long_idle_ms: list[float] = field(default_factory=list)                   # sorted, after 1-2 s pauses
    errors: list[str] = field(default_factory=list)


class Target(ABC):
    """One queue system on one store. Methods are synchronous; async clients run their own loop."""

    name: str = ""
    version: str = ""
    redis_db: int = PEER_DB
    jobs: int = 20_000
    latency_samples: int = 200
    latency_budget: float = 20.0
    long_idle_samples: int = 8
    bulk_label: str = ""          # set when enqueue_bulk is implemented

    def env(self) -> dict[str, str]:
        """Environment of the worker processes (besides the BENCH_* variables)."""
        return {}

    def setup(self) -> None:
        self.clear()

    def teardown(self) -> None:
        self.clear()

    def connect(self) -> None:
        """Open the client before a clock starts."""

    def clear(self) -> None:
        """Remove every queued job and result: flush this target's Redis db."""
        import redis

        redis.Redis.from_url(redis_url(self.redis_db)).flushdb()

    @abstractmethod
    def enqueue(self, n: int) -> None:
        """Push n no-op jobs, one call at a time."""

    def enqueue_bulk(self, n: int) -> None:
        raise NotImplementedError

    @abstractmethod
    def send_probe(self) -> None:
        """Dispatch one probe job carrying sent=time.time(), taken just before the dispatch call."""

    @abstractmethod
    def throughput_workers(self) -> list[WorkerConfig]: ...

    @abstractmethod
    def latency_worker(self) -> WorkerConfig: ...


# -- worker processes ------------------------------------------------------------------------------

class WorkerProcess:
    """A worker started in its own session, so it and its children can be stopped together by id."""

    def __init__(self, config: WorkerConfig, env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log", delete=False)
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env, **config.env}
        self.proc = subprocess.Popen(config.argv, cwd=ROOT, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def tail(self, lines: int = 5) -> str:
        text = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def stop(self, grace: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:
            _signal_group(self.proc.pid, signal.SIGKILL)   # children a worker may have left behind
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        return self.proc.returncode


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


# -- scenarios -------------------------------------------------------------------------------------

def timed_rate(fn: Callable[[int], None], n: int) -> float:
    started = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - started)


def drain(target: Target, config: WorkerConfig, n: int, timeout: float) -> float:
    """Start a worker on n queued no-op jobs; jobs/s from the first job's start to the last's end."""
    stamp = Path(tempfile.gettempdir()) / f"bench-stamp-{os.getpid()}"
    stamp.unlink(missing_ok=True)
    worker = WorkerProcess(config, {**target.env(), "BENCH_JOBS": str(n), "BENCH_STAMP": str(stamp)})
    try:
        deadline = time.monotonic() + timeout
        while not stamp.exists():
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited {worker.proc.returncode} before the last job: {worker.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not done after {timeout:.0f}s: {worker.tail()}")
            time.sleep(0.02)
        if config.exits_when_empty:
            worker.proc.wait(15)
            if worker.proc.returncode != 0:
                raise RuntimeError(f"worker exited {worker.proc.returncode}: {worker.tail()}")
    finally:
        worker.stop()
    first, last = (float(x) for x in stamp.read_text().split())
    stamp.unlink(missing_ok=True)
    return n / (last - first)


def measure_latency(target: Target) -> tuple[list[float], list[float]]:
    import redis

    from bench.probe import LATENCY_KEY

    client = redis.Redis.from_url(redis_url(target.redis_db))
    worker = WorkerProcess(target.latency_worker(), {**target.env(), "BENCH_REDIS_URL": redis_url(target.redis_db)})
    samples: list[float] = []
    long_idle: list[float] = []

    def sample(pause: float) -> float:
        time.sleep(pause)
        target.send_probe()
        popped = client.blpop([LATENCY_KEY], timeout=10)
        if popped is None:
            raise RuntimeError(f"probe job not run within 10s: {worker.tail()}")
        return float(popped[1]) * 1000

    try:
        for i in range(3):    # warm-up; the first also waits for the worker to start
            target.connect()
            target.send_probe()
            if client.blpop([LATENCY_KEY], timeout=30 if i == 0 else 10) is None:
                raise RuntimeError(f"probe job not run: {worker.tail()}")
        deadline = time.monotonic() + target.latency_budget
        while len(samples) < target.latency_samples and time.monotonic() < deadline:
            samples.append(sample(random.uniform(0.02, 0.05)))
        for _ in range(target.long_idle_samples):
            long_idle.append(sample(random.uniform(1.0, 2.0)))
    finally:
        worker.stop()
    return sorted(samples), sorted(long_idle)


def run(target: Target, timeout: float = 120.0) -> Result:
    result = Result(name=target.name, version=target.version, jobs=target.jobs, bulk_label=target.bulk_label)
    n = target.jobs
    fills: list[tuple[str, Callable[[int], None]]] = [("enqueue", target.enqueue)]
    if target.bulk_label:
        fills.append(("bulk", target.enqueue_bulk))
    target.setup()
    try:
        configs = target.throughput_workers()
        for i in range(max(len(configs), len(fills))):
            filled = _attempt(result, f"enqueue for worker {i}", lambda: _fill(target, result, fills, i, n))
            if i < len(configs):
                rate = None
                if filled:
                    rate = _attempt(result, f"worker {configs[i].label}", lambda: drain(target, configs[i], n, timeout))
                result.throughput.append((configs[i].label, rate))
            target.clear()
        latency = target.latency_worker()
        result.latency_label = latency.label
        result.latency_ms, result.long_idle_ms = _attempt(result, "latency", lambda: measure_latency(target)) or ([], [])
    finally:
        _attempt(result, "teardown", target.teardown)
    return result


def _fill(target: Target, result: Result, fills: Sequence[tuple[str, Callable[[int], None]]], i: int, n: int) -> bool:
    if i < len(fills):
        name, fn = fills[i]
        target.connect()
        setattr(result, name, timed_rate(fn, n))
    else:
        (target.enqueue_bulk if target.bulk_label else target.enqueue)(n)
    return True


def _attempt(result: Result, what: str, fn: Callable):
    try:
        return fn()
    except Exception as exc:
        result.errors.append(f"{what}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return None


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run.py's timeout: finally blocks stop workers
    module = importlib.import_module(argv[0])
    target: Target = module.make_target(*argv[1:])
    result = run(target)
    print(json.dumps(asdict(result)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
