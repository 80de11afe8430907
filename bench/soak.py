"""`make soak`: workers are SIGKILLed at random while they run jobs; nothing may be lost.

For each connection (sqlite, mysql, redis): N jobs are dispatched, W worker processes work them
with QUEUE_VISIBILITY_TIMEOUT=2, and every second or so one worker, picked at random, is killed
with SIGKILL and a new one started. At the end every job must have succeeded or be in
failed_jobs, and a job may have run more than once only if a killed worker was running it
(at-least-once, and twice only when a worker died). Prints one line per connection; exits 1 if
any connection lost or double-ran a job.

    python bench/soak.py [--jobs 3000] [--workers 4] [--kills 10] [sqlite mysql redis]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MYSQL_DB = "soak_jobs"
REDIS_DB = "13"


def environment(connection: str, tmp: Path) -> dict[str, str]:
    env = dict(os.environ, JOB_PACKAGES="bench.jobs", APP_KEY="", LOG_FILE="", QUEUE_VISIBILITY_TIMEOUT="2",
               DB_CONNECTION="sqlite", DB_DATABASE=str(tmp / "soak.sqlite"), QUEUE_CONNECTION="database",
               REDIS_DB=REDIS_DB, REDIS_URL="", REDIS_HOST="127.0.0.1", REDIS_PORT="6379")
    if connection == "mysql":
        env.update(DB_CONNECTION="mysql", DB_DATABASE=MYSQL_DB, DB_HOST="127.0.0.1", DB_PORT="3306",
                   DB_USERNAME="root", DB_PASSWORD="")
    if connection == "redis":
        env.update(QUEUE_CONNECTION="redis")
    return env


def reset_stores(connection: str, create: bool = True) -> None:
    if connection == "mysql":
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_DB}")
            if create:
                cur.execute(f"CREATE DATABASE {MYSQL_DB}")
        conn.close()
    if connection == "redis":
        import redis

        redis.Redis(db=int(REDIS_DB)).flushdb()


async def dispatch(count: int, log: Path) -> list[str]:
    from bench.jobs import SoakJob
    from bootstrap.app import create_app

    async with create_app():
        return await SoakJob.dispatch_many([{"log": str(log), "work": 0.05} for _ in range(count)])


async def outcome() -> tuple[set[str], int]:
    from bootstrap.app import create_app

    async with create_app() as app:
        failed = {job.uuid for job in await (await app.queue.failed_store()).all()}
        sizes = await (await app.queue.connection()).sizes(["default"])
        left = sizes["default"].pending + sizes["default"].delayed + sizes["default"].reserved
        return failed, left


def soak(connection: str, jobs: int, workers: int, kills: int) -> bool:
    reset_stores(connection)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = environment(connection, tmp)
        os.environ.update(env)
        log = tmp / "runs.log"
        ids = set(asyncio.run(dispatch(jobs, log)))
        argv = [sys.executable, "main.py", "queue:work", "--concurrency", "4", "--sleep", "0.2"]
        out = open(tmp / "workers.out", "w")
        start = lambda: subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: E731
        procs = [start() for _ in range(workers)]
        killed: set[int] = set()
        began = time.monotonic()
        for _ in range(kills):
            time.sleep(random.uniform(0.5, 1.5))
            victim = random.choice(procs)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed.add(victim.pid)
            procs[procs.index(victim)] = start()
        # Let the survivors finish, including the jobs of killed workers (back after 2 s).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            failed, left = asyncio.run(outcome())
            if left == 0:
                break
            time.sleep(0.5)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        out.close()
        elapsed = time.monotonic() - began
        runs = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    done = collections.Counter(job_id for job_id, _, _ in runs)
    lost = ids - set(done) - failed
    repeated = {job_id for job_id, n in done.items() if n > 1}
    # A repeat is allowed only when an earlier run was in a worker that was killed: its run
    # finished (the line was written) but the worker died before acknowledging.
    pids = collections.defaultdict(list)
    for job_id, _, pid in runs:
        pids[job_id].append(int(pid))
    unexplained = {j for j in repeated if not any(pid in killed for pid in pids[j][:-1])}
    ok = not lost and not unexplained and left == 0
    print(f"{connection:<7} {jobs} jobs, {workers} workers, {kills} SIGKILLs in {elapsed:.1f}s: "
          f"{len(done)} succeeded, {len(failed)} failed, {len(lost)} lost, {left} left in the queue, "
          f"{len(repeated)} ran twice (all after a kill: {not unexplained}) -> {'OK' if ok else 'FAILED'}",
          flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("connections", nargs="*", default=["sqlite", "mysql", "redis"])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=10)
    args = parser.parse_args()
    results = []
    for connection in args.connections:
        try:
            results.append(soak(connection, args.jobs, args.workers, args.kills))
        finally:
            reset_stores(connection, create=False)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
