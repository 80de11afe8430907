"""What the benchmark jobs call from inside a worker, in any venv (stdlib and redis-py only).

- `tick()`: every no-op job calls it. Each worker process keeps its own count and writes
  "first last count" (time.time() of its first and latest job, and how many it ran) to the file
  BENCH_STAMP.<pid>, atomically: when its count reaches BENCH_JOBS, at most every 0.05 s while it
  runs, and when the process exits. With BENCH_STAMP_EVERY=1 it writes after every job (several
  processes that never exit by themselves, where no one process sees the last job). The driver adds
  the files up: throughput = count / (last - first), from the first job's start to the last job's
  end as the jobs saw them, so worker start-up and shutdown are not counted.
- `record_latency(sent)`: a probe job calls it first thing in its handler with the time.time()
  taken just before it was dispatched; the difference is pushed onto the Redis list LATENCY_KEY
  (BENCH_REDIS_URL), where the driver waits for it.
"""
from __future__ import annotations

import atexit
import itertools
import os
import threading
import time
from typing import Any

LATENCY_KEY = "bench:latency"
WRITE_EVERY = 0.05      # seconds: a rate read mid-run is off by at most this over the run

_counter = itertools.count(1)   # next() on a count is atomic in CPython: safe under worker threads
_lock = threading.Lock()
_first = 0.0
_next_write = 0.0
_latest: tuple[float, int] = (0.0, 0)
_client: Any = None


def tick() -> None:
    global _first, _next_write, _latest
    n = next(_counter)
    now = time.time()
    if n == 1:
        _first = now
        atexit.register(_write_latest)
    if n > _latest[1]:
        _latest = (now, n)
    if n == _target() or now >= _next_write or _every():
        _next_write = now + WRITE_EVERY
        _write(now, n)


def _target() -> int:
    return int(os.environ.get("BENCH_JOBS") or 0)


def _every() -> bool:
    return os.environ.get("BENCH_STAMP_EVERY") == "1"


def _write_latest() -> None:
    last, n = _latest
    if n:
        _write(last, n)


def _write(last: float, n: int) -> None:
    stamp = os.environ.get("BENCH_STAMP")
    if not stamp:
        return
    path = f"{stamp}.{os.getpid()}"
    with _lock:
        with open(path + ".tmp", "w") as f:
            f.write(f"{_first!r} {last!r} {n}")
        os.replace(path + ".tmp", path)


def record_latency(sent: float) -> None:
    global _client
    latency = time.time() - float(sent)
    if _client is None:
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _client.rpush(LATENCY_KEY, repr(latency))
