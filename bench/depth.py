"""Scenario (g), ours on Redis (db 11; 10 and 13 park builds): does a deep queue slow the worker down?

Three cases, each on a freshly flushed db:
- N jobs to process with 1,000 more queued behind them (the baseline);
- N jobs with DEPTH (BENCH_DEPTH, default 1,000,000) more queued behind them;
- N jobs (and 1,000 behind) with DEPTH more delayed an hour into the future;
and the same three again with every job at a random priority 0..9 (SPEC 11; seeded, so every run
builds the same queue), reported next to the priority-0 case as a ratio: a priority moves a job's
place in the queue (Redis ranks it at seq - p * 2^44, the database orders by priority_rank), so a
deep queue of mixed priorities is the case where a reserve could stop being flat.
Each case is drained ROUNDS (3) times from one build, N jobs a round (so 3N + 1,000 are queued
ahead of what stays behind), and the median round is reported: one round is about a second,
and single rounds of the same case differed by 10%. A case's two builds (priority 0, mixed) wait
in dbs 10 and 13 and take turns in db 11 (SWAPDB), drained A B B A A B, so load on a shared
machine falls on both alike.
Each build also holds a baseline beside it: queue `base`, the same jobs (same priorities) with
only 1,000 behind them. Every round drains N from the deep queue and N from `base` in turn (which
goes first alternates), with the deep queue's memory in Redis either way. The ratio that judges
(g) is the median of the rounds' deep/base ratios ("pair_ratio"): what depth itself costs a
reserve, apart from what a bigger Redis or a busier machine costs every drain in that minute (the
1,000-waiting case, run minutes earlier with little in Redis, read up to 2x faster, and the
worker's CPU per job rose with depth although the worker never sees it).
The queue is built with `NoopJob.dispatch_many` in chunks of 10,000; the delayed jobs with the
call dispatch_many makes, given a delay (dispatch_many itself takes none). Then one worker,
`queue:work --concurrency 10` (no --stop-when-empty: it is stopped after the N-th job), runs;
rate = N / (N-th job's end - first job's start), as in harness.drain. Also reported: how long the
build took, and Redis's used_memory once built.

Then the database connection (finding 13 of issue 11: a reserve used to read every delayed row
ahead of a due one), on SQLite and on MySQL: N due jobs queued behind no delayed jobs, then behind
DB_DEPTH (BENCH_DB_DEPTH, default 100,000) delayed an hour; rate = N / the time of reserving them
in batches of 10 and acknowledging each batch, straight on the store (no worker process), so the
reserve's own cost shows. Flat means the two rates are alike. Both again with mixed priorities
(due and delayed jobs at a random priority 0..9), run A B B A with the priority-0 case, each the
mean of its two runs.

Each Redis drain also records the redis-server's CPU time per job (INFO cpu, user + system, over
the drain), its commands per job (INFO commandstats) and the worker process's CPU time per job
(/proc, its start-up included), steadier than a rate on a busy machine;
they mean what they say only when the Redis serves nothing else (BENCH_REDIS_PORT: a private
redis-server).

Run: `python -m bench.depth` (`--database`: only the database cases, `--redis`: only Redis's); the
last line printed is the result as JSON (bench/run.py reads it).
"""
from __future__ import annotations

import json
import os
import random
import signal
import statistics
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
MIXED = (0, 9)            # the priorities of the mixed cases, drawn uniformly
SEED = 12


async def _build(ready: int, delayed: int, mixed: bool = False, queue: str | None = None) -> None:
    from bench.jobs import NoopJob
    # dispatch_many has no delay; this is the push it makes, with one (not a public API).
    from core.dispatch import _push_all

    draw = random.Random(SEED)

    def jobs(count: int) -> list:
        made = [NoopJob.make() for _ in range(count)]
        if mixed:
            for job in made:
                job.priority = draw.randint(*MIXED)    # type: ignore[misc]   # the instance's setting
        return made

    for start in range(0, delayed, CHUNK):
        await _push_all(jobs(min(CHUNK, delayed - start)), queue=queue, connection=None, delay=DELAY)
    for start in range(0, ready, CHUNK):
        if mixed or queue:
            await _push_all(jobs(min(CHUNK, ready - start)), queue=queue, connection=None)
        else:
            await NoopJob.dispatch_many([{} for _ in range(min(CHUNK, ready - start))])


def priorities(mixed: bool) -> str:
    return f"{MIXED[0]}..{MIXED[1]}" if mixed else "0"


BASE_QUEUE = "base"       # the baseline drained in turn with each deep case, 1,000 behind its rounds' jobs
PARKED = {False: 10, True: 13}   # where each build of a pair waits while the other drains (bench dbs, never 9/14/15)
ORDER = (False, True, True, False, False, True)   # A B B A A B: ROUNDS drains each, interleaved


def _redis(db: int) -> Any:
    import redis

    return redis.Redis.from_url(redis_url(db))


def _flush(*dbs: int) -> None:
    """Empty the dbs without blocking Redis (a 1M-job db), then wait until it has freed them: a
    build's memory is read as used_memory after minus before."""
    for db in dbs or (OUR_DB,):
        _redis(db).flushdb(asynchronous=True)
    deadline = time.monotonic() + 60
    while _redis(OUR_DB).info("memory").get("lazyfree_pending_objects", 0) and time.monotonic() < deadline:
        time.sleep(0.05)


def _used_memory_mb() -> float:
    return round(_redis(OUR_DB).info("memory")["used_memory"] / 2**20, 1)


def _server_cpu() -> float:
    """The redis-server process's CPU seconds so far (INFO cpu: its rusage, user + system): a drain's
    cost to the server, which a busy machine's preemption does not inflate as it does a rate."""
    cpu = _redis(OUR_DB).info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _calls() -> int:
    return sum(v["calls"] for v in _redis(OUR_DB).info("commandstats").values())


def run_pair(target: Ours, label: str, behind: int, delayed: int, n: int) -> list[dict[str, Any]]:
    """One case at priority 0 and with mixed priorities, each built once and parked in a db of its
    own; then ROUNDS drains of n jobs from each, interleaved A B B A A B (SWAPDB moves a build in
    and out of OUR_DB at no cost), so the machine's drift falls on both alike; the median round of
    each. The queue ahead of `behind` holds every round's jobs, plus SPARE for the jobs a stopped
    worker had in hand."""
    _flush(OUR_DB, *PARKED.values())
    ready = ROUNDS * n + SPARE + behind
    rows: dict[bool, dict[str, Any]] = {}
    for mixed in (False, True):
        before = _used_memory_mb()
        started = time.perf_counter()
        target._call(_build, ready, delayed, mixed)
        memory = _used_memory_mb() - before
        target._call(_build, ROUNDS * n + SPARE + BEHIND, 0, mixed, BASE_QUEUE)
        target._close_app()
        rows[mixed] = {"case": label, "priorities": priorities(mixed), "ready": ready, "delayed": delayed,
                       "build_s": round(time.perf_counter() - started, 1), "redis_mb": round(memory, 1)}
        _redis(OUR_DB).swapdb(OUR_DB, PARKED[mixed])
    deep = WorkerConfig("--concurrency 10", target._work("--concurrency", "10"), concurrency=10)
    base = WorkerConfig("--concurrency 10 --queue base",
                        target._work("--concurrency", "10", "--queue", BASE_QUEUE), concurrency=10)
    rounds: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    try:
        for turn, mixed in enumerate(ORDER):
            _redis(OUR_DB).swapdb(OUR_DB, PARKED[mixed])
            try:
                pair = {}
                for worker in ((deep, base) if turn % 2 == 0 else (base, deep)):
                    pair[worker is deep] = _measured_drain(target, worker, n)
                result, baseline = pair[True], pair[False]
                result["base_rate"] = baseline["rate"]
                rounds[mixed].append(result)
            finally:
                _redis(OUR_DB).swapdb(OUR_DB, PARKED[mixed])
    finally:
        _flush(OUR_DB, *PARKED.values())
    for mixed, row in rows.items():
        rates = [r["rate"] for r in rounds[mixed] if r["rate"]]
        if len(rates) == ROUNDS:
            row.update(sorted(rounds[mixed], key=lambda r: r["rate"])[ROUNDS // 2])
        else:
            row.update(next(r for r in rounds[mixed] if not r["rate"]))
        row["rates"] = [round(rate) for rate in rates]
        base_rates = [r["base_rate"] for r in rounds[mixed] if r.get("base_rate")]
        row["base_rates"] = [round(rate) for rate in base_rates]
        row["base_rate"] = round(statistics.median(base_rates)) if len(base_rates) == ROUNDS else None
        ratios = [r["rate"] / r["base_rate"] for r in rounds[mixed] if r["rate"] and r.get("base_rate")]
        row["pair_ratio"] = round(statistics.median(ratios), 3) if len(ratios) == ROUNDS else None
        server = sorted(r["server_us"] for r in rounds[mixed] if r.get("server_us"))
        row["server_us"] = server[len(server) // 2] if server else None
        row["server_us_rounds"] = server
        worker_cpu = sorted(r["worker_us"] for r in rounds[mixed] if r.get("worker_us"))
        row["worker_us"] = worker_cpu[len(worker_cpu) // 2] if worker_cpu else None
        row["worker_us_rounds"] = worker_cpu
    return [rows[False], rows[True]]


def _measured_drain(target: Ours, worker: WorkerConfig, n: int) -> dict[str, Any]:
    """drain() with the redis-server's CPU and commands per job and the worker's CPU per job."""
    _redis(OUR_DB).config_resetstat()
    cpu = _server_cpu()
    result = drain(target, worker, n, budget=DRAIN_BUDGET)
    cpu, calls = _server_cpu() - cpu, _calls()
    if result.get("jobs"):
        result["server_us"] = round(cpu * 1e6 / result["jobs"], 2)
        result["server_calls"] = round(calls / result["jobs"], 2)
        if result.get("cpu_s"):     # the worker's own CPU (its start-up included) per job
            result["worker_us"] = round(result["cpu_s"] * 1e6 / result["jobs"], 1)
    return result


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


def run_database_case(connection: str, delayed: int, n: int, mixed: bool = False) -> dict[str, Any]:
    """n due jobs behind `delayed` delayed ones on a fresh database, reserved and acknowledged."""
    target = Ours(connection)
    try:
        target.clear()
        started = time.perf_counter()
        target._call(_build, n, delayed, mixed)
        row: dict[str, Any] = {"store": connection, "case": f"{delayed:,} delayed ahead",
                               "priorities": priorities(mixed), "ready": n,
                               "delayed": delayed, "build_s": round(time.perf_counter() - started, 1)}
        row.update(target._call(_reserve_all, n))
        return row
    finally:
        target.teardown()


def database_rows(n: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Each store and depth at priority 0 and mixed, run A B B A (a fresh database each time); the
    mean of each one's two runs."""
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for connection in ("sqlite", "mysql"):
        for delayed in (0, DB_DEPTH):
            runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for mixed in ORDER[:4]:
                try:
                    runs[mixed].append(run_database_case(connection, delayed, n, mixed))
                except Exception as exc:
                    traceback.print_exc()
                    errors.append(f"{connection} {delayed:,} delayed, priorities {priorities(mixed)}: "
                                  f"{type(exc).__name__}: {exc}")
                    runs[mixed].append({"rate": None})
            for mixed in (False, True):
                rates = [r["rate"] for r in runs[mixed]]
                row = {**runs[mixed][0], "store": connection, "case": f"{delayed:,} delayed ahead",
                       "priorities": priorities(mixed), "delayed": delayed, "rates": rates,
                       "rate": round(sum(rates) / len(rates)) if all(rates) else None}
                rows.append(row)
    return rows, errors


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n = min(N, 20_000)
    only_redis = "--redis" in sys.argv[1:]
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
                rows += run_pair(target, label, behind, delayed, n)
            except Exception as exc:
                traceback.print_exc()
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                rows += [{"case": label, "priorities": priorities(mixed), "rate": None} for mixed in (False, True)]
    finally:
        _flush(OUR_DB, *PARKED.values())
        target._close_app()
        target._runner.close()
    database, db_errors = ([], []) if only_redis else database_rows(n)
    print(json.dumps({"name": "ours depth (redis)", "jobs": n, "depth": DEPTH, "rows": rows, "db_depth": DB_DEPTH,
                      "database": database, "errors": errors + db_errors}), flush=True)


if __name__ == "__main__":
    main()
