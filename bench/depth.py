"""Scenario (g), ours on Redis (db 11): does a deep queue slow the worker down?

Three cases, each on a freshly flushed db:
- N jobs to process with 1,000 more queued behind them (the baseline);
- N jobs with DEPTH (BENCH_DEPTH, default 1,000,000) more queued behind them;
- N jobs (and 1,000 behind) with DEPTH more delayed an hour into the future.
Each case is drained ROUNDS (3) times from one build, N jobs a round (so 3N + 1,000 are queued
ahead of what stays behind), and the median round is reported: one round is about a second,
and single rounds of the same case differed by 10%.
The queue is built with `NoopJob.dispatch_many` in chunks of 10,000; the delayed jobs with the
call dispatch_many makes, given a delay (dispatch_many itself takes none). Then one worker,
`queue:work --concurrency 10` (no --stop-when-empty: it is stopped after the N-th job), runs;
rate = N / (N-th job's end - first job's start), as in harness.drain. Also reported: how long the
build took, and Redis's used_memory once built.

Then the database connection (finding 13 of issue 11: a reserve used to read every delayed row
ahead of a due one), on SQLite and on MySQL: N due jobs queued behind no delayed jobs, then behind
DB_DEPTH (BENCH_DB_DEPTH, default 100,000) delayed an hour; rate = N / the time of reserving them
in batches of 10 and acknowledging each batch, straight on the store (no worker process), so the
reserve's own cost shows. Flat means the two rates are alike.

Run: `python -m bench.depth` (`--database`: only the database cases); the last line printed is the
result as JSON (bench/run.py reads it).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from bench.harness import DRAIN_BUDGET, N, OUR_DB, WorkerConfig, drain, redis_url
from bench.ours import Ours

DEPTH = int(os.environ.get("BENCH_DEPTH") or 1_000_000)
BEHIND = 1_000
CHUNK = 10_000
ROUNDS = 3                # drains per case; the median is reported (one drain is about a second: noisy)
SPARE = 1_000
DELAY = 3600.0
DB_DEPTH = int(os.environ.get("BENCH_DB_DEPTH") or 100_000)
DB_BATCH = 10


async def _build(ready: int, delayed: int) -> None:
    from bench.jobs import NoopJob
    # dispatch_many has no delay; this is the push it makes, with one (not a public API).
    from core.dispatch import _push_all

    for start in range(0, delayed, CHUNK):
        jobs = [NoopJob.make() for _ in range(min(CHUNK, delayed - start))]
        await _push_all(jobs, queue=None, connection=None, delay=DELAY)
    for start in range(0, ready, CHUNK):
        await NoopJob.dispatch_many([{} for _ in range(min(CHUNK, ready - start))])


def _flush() -> None:
    import redis

    redis.Redis.from_url(redis_url(OUR_DB)).flushdb(asynchronous=True)   # a 1M-job db: do not block Redis


def _used_memory_mb() -> float:
    import redis

    return round(redis.Redis.from_url(redis_url(OUR_DB)).info("memory")["used_memory"] / 2**20, 1)


def run_case(target: Ours, label: str, behind: int, delayed: int, n: int) -> dict[str, Any]:
    """ROUNDS drains of n jobs each, one after another from one build (the queue ahead of `behind`
    holds them all, plus SPARE for the jobs a stopped worker had in hand); the median round."""
    _flush()
    started = time.perf_counter()
    ready = ROUNDS * n + SPARE + behind
    target._call(_build, ready, delayed)
    target._close_app()
    row: dict[str, Any] = {"case": label, "ready": ready, "delayed": delayed,
                           "build_s": round(time.perf_counter() - started, 1), "redis_mb": _used_memory_mb()}
    worker = WorkerConfig("--concurrency 10", target._work("--concurrency", "10"), concurrency=10)
    rounds = [drain(target, worker, n, budget=DRAIN_BUDGET) for _ in range(ROUNDS)]
    rates = [r["rate"] for r in rounds if r["rate"]]
    if len(rates) == ROUNDS:
        row.update(sorted(rounds, key=lambda r: r["rate"])[ROUNDS // 2])
    else:
        row.update(next(r for r in rounds if not r["rate"]))
    row["rates"] = [round(rate) for rate in rates]
    return row


async def _reserve_all(n: int) -> dict[str, Any]:
    from core.app import current

    conn = await current().queue.connection()
    done, started = 0, time.perf_counter()
    while done < n:
        jobs = await conn.reserve_many(["default"], DB_BATCH)
        if not jobs:
            break
        await conn.acknowledge_many(jobs)
        done += len(jobs)
    seconds = time.perf_counter() - started
    return {"reserved": done, "seconds": round(seconds, 2), "rate": round(done / seconds) if done == n else None}


def run_database_case(connection: str, delayed: int, n: int) -> dict[str, Any]:
    """n due jobs behind `delayed` delayed ones on a fresh database, reserved and acknowledged."""
    target = Ours(connection)
    try:
        target.clear()
        started = time.perf_counter()
        target._call(_build, n, delayed)
        row: dict[str, Any] = {"store": connection, "case": f"{delayed:,} delayed ahead", "ready": n,
                               "delayed": delayed, "build_s": round(time.perf_counter() - started, 1)}
        row.update(target._call(_reserve_all, n))
        return row
    finally:
        target.teardown()


def database_rows(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for connection in ("sqlite", "mysql"):
        for delayed in (0, DB_DEPTH):
            try:
                rows.append(run_database_case(connection, delayed, n))
            except Exception as exc:
                traceback.print_exc()
                errors.append(f"{connection} {delayed:,} delayed: {type(exc).__name__}: {exc}")
                rows.append({"store": connection, "case": f"{delayed:,} delayed ahead", "rate": None})
    return rows, errors


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n = min(N, 20_000)
    if "--database" in sys.argv[1:]:
        rows, errors = database_rows(n)
        print(json.dumps({"name": "ours depth (redis)", "jobs": n, "depth": DEPTH, "rows": [], "db_depth": DB_DEPTH,
                          "database": rows, "errors": errors}), flush=True)
        return
    target = Ours("redis")
    cases = [(f"{BEHIND:,} waiting", BEHIND, 0), (f"{DEPTH:,} waiting", DEPTH, 0),
             (f"{DEPTH:,} delayed", BEHIND, DEPTH)]
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        for label, behind, delayed in cases:
            try:
                rows.append(run_case(target, label, behind, delayed, n))
            except Exception as exc:
                traceback.print_exc()
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                rows.append({"case": label, "rate": None})
    finally:
        _flush()
        target._close_app()
        target._runner.close()
    database, db_errors = database_rows(n)
    print(json.dumps({"name": "ours depth (redis)", "jobs": n, "depth": DEPTH, "rows": rows, "db_depth": DB_DEPTH,
                      "database": database, "errors": errors + db_errors}), flush=True)


if __name__ == "__main__":
    main()
