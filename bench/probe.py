"""What the benchmark jobs call from inside a worker, in any venv (stdlib and redis-py only).

- `tick()`: every no-op job calls it. The first call notes time.time(); the BENCH_JOBS-th call
  writes "first last" to the file BENCH_STAMP. Throughput is BENCH_JOBS / (last - first): from the
  first job's start to the last job's end, as the jobs themselves saw it, so worker start-up and
  shutdown are not counted. It costs one atomic counter step per job.
- `record_latency(sent)`: a probe job calls it first thing in its handler with the time.time()
  taken just before it was dispatched; the difference is pushed onto the Redis list LATENCY_KEY
  (BENCH_REDIS_URL), where the driver waits for it.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Any

LATENCY_KEY = "bench:latency"

_counter = itertools.count(1)   # next() on a count is atomic in CPython: safe under worker threads
_first = 0.0
_client: Any = None


def tick() -> None:
    global _first
    n = next(_counter)
    if n == 1:
        _first = time.time()
    if n == int(os.environ.get("BENCH_JOBS") or 0):
        path = os.environ["BENCH_STAMP"]
        with open(path + ".tmp", "w") as f:
            f.write(f"{_first!r} {time.time()!r}")
        os.replace(path + ".tmp", path)


def record_latency(sent: float) -> None:
    global _client
    latency = time.time() - float(sent)
    if _client is None:
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _client.rpush(LATENCY_KEY, repr(latency))
