"""How soon `await ref.wait()` returns after the job ended (SPEC 11), on SQLite, MySQL and Redis.

One worker (`queue:work --concurrency 1`) runs StampJob, which returns time.time() as its handle()
ends; the bench dispatches one job at a time and waits on it: latency = the moment wait() returned
minus that time (one host, one clock). Redis wakes a waiter through a list the acknowledging script
pushes (a round trip); the databases poll, 50 ms doubling to 1 s, so a job that ends early in a
wait is seen at the next poll. ROUNDS jobs per store (BENCH_WAIT_JOBS, default 200); p50, p95 and
max are printed per store, and the last line is the result as JSON.

Run: `python -m bench.wait [sqlite] [mysql] [redis]` (default: all three; MySQL and Redis on
127.0.0.1, Redis db 13 (BENCH_WAIT_REDIS_DB), MySQL database bench_wait, created and dropped).
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("BENCH_WAIT_JOBS") or 200)
REDIS_DB = os.environ.get("BENCH_WAIT_REDIS_DB") or "13"
MYSQL_DB = "bench_wait"


def environment(store: str, tmp: str) -> dict[str, str]:
    env = {**os.environ, "JOB_PACKAGES": "bench.jobs", "APP_KEY": "", "APP_LISTENERS": "", "LOG_LEVEL": "WARNING",
           "BENCH_JOBS": "0", "BENCH_STAMP": os.path.join(tmp, "stamp")}
    if store == "redis":
        env.update(QUEUE_CONNECTION="redis", REDIS_DB=REDIS_DB, DB_DATABASE=os.path.join(tmp, "failed.sqlite"))
    elif store == "mysql":
        env.update(QUEUE_CONNECTION="database", DB_CONNECTION="mysql", DB_DATABASE=MYSQL_DB)
    else:
        env.update(QUEUE_CONNECTION="database", DB_DATABASE=os.path.join(tmp, "db.sqlite"))
    return env


async def measure(rounds: int) -> list[float]:
    from bootstrap.app import create_app
    from bench.jobs import StampJob

    latencies = []
    async with create_app():
        for _ in range(rounds):
            ref = await StampJob.dispatch()
            ended = await ref.wait(timeout=30)
            latencies.append(time.time() - ended)
    return latencies


def run_store(store: str) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="bench-wait-")
    env = environment(store, tmp)
    if store == "mysql":
        import pymysql

        with pymysql.connect(host="127.0.0.1", user="root", autocommit=True) as conn:
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {MYSQL_DB}")
            conn.cursor().execute(f"CREATE DATABASE {MYSQL_DB}")
    if store == "redis":
        import redis

        redis.Redis(db=int(REDIS_DB)).flushdb()
    subprocess.run([sys.executable, "main.py", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    with open(os.path.join(tmp, "worker.log"), "w") as out:
        worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "--concurrency", "1", "--sleep", "0.05"],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        latencies = asyncio.run(measure(ROUNDS))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        worker.terminate()
        worker.wait(30)
    ms = sorted(x * 1000 for x in latencies)
    return {"p50_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 2),
            "max_ms": round(ms[-1], 2), "jobs": len(ms)}


def main() -> None:
    stores = sys.argv[1:] or ["sqlite", "mysql", "redis"]
    results = {}
    for store in stores:
        results[store] = run_store(store)
        r = results[store]
        print(f"{store:7} wait() returned after the job ended: p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
              f"max {r['max_ms']:.1f} ms ({r['jobs']} jobs)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
