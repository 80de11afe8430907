"""`make soak`: the chaos test, longer. Workers are SIGKILLed at random while they run jobs, beside
the other fault classes; nothing may be lost, run twice unexplained, or failed twice.

For each store (sqlite, mysql, pgsql, redis) the chaos driver (tests/chaos/driver.py, the same one the
test suite runs for about 30 s per store) dispatches SOAK_JOBS jobs of mixed length over
SOAK_SECONDS while SOAK_WORKERS `queue:work` processes run them; every SOAK_KILL_EVERY seconds
or so one worker is SIGKILLed and replaced. QUEUE_VISIBILITY_TIMEOUT is SOAK_VISIBILITY_TIMEOUT (4).
The other fault classes, each 0 to switch it off:

    SOAK_BLOCKERS (0.1)        share of jobs that block their worker's event loop (time.sleep) for
                               60-80% of their 2 s timeout, in clusters, beside ordinary jobs
    SOAK_DROPPED_ANSWERS (0.3) share of jobs dispatched through a proxy that now and then drops
                               the store's answers, then resets (MySQL, Redis; SQLite has no wire)
    SOAK_RETRY_EVERY (0.5)     mean seconds between `queue:retry all` calls while workers run
    SOAK_CLEARS (3)            `queue:clear` calls, at random moments, while workers run
    SOAK_CUT_EVERY (5)         mean seconds between cuts of the failed-job store while jobs fail:
                               MySQL's and PostgreSQL's whole store; Redis's failed store (MySQL)
                               and, every other time, Redis itself; SQLite's write lock instead

At the end every job must have succeeded, be in failed_jobs, or be accounted for by the counts
queue:clear reported; the queue must be empty; a job may have run twice only where a killed worker
was running it or queue:retry put it back; failed() runs once per failure (unless a kill cut it
short) and no failed row is stale. Prints one line per store (and the problems, if any, with where
the run's logs were kept); exits 1 if any store failed.

    python bench/soak.py [--jobs 3000] [--seconds 60] [--workers 4] [sqlite mysql pgsql redis]

MySQL and PostgreSQL get a database of their own (dropped afterwards; the Redis run keeps its failed
jobs in MySQL's); Redis a key prefix of its own on SOAK_REDIS_DB (default: the first db of
TEST_REDIS_DB, else 13), its keys deleted afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chaos.driver import ChaosPlan, evidence, run_chaos  # noqa: E402
from tests.servers import PGSQL_USER, pgsql_query  # noqa: E402

STORES = ("sqlite", "mysql", "pgsql", "redis")


def setting(name: str, default: str) -> str:
    return os.environ.get(name, "") or default


def environment(store: str, tmp: Path, mysql_db: str, redis_prefix: str) -> dict[str, str]:
    """Every setting the workers read, so a developer's .env cannot change what is measured."""
    env = {"JOB_PACKAGES": "tests.jobs", "APP_KEY": "soak-signing-key", "LOG_FILE": "",
           "QUEUE_VISIBILITY_TIMEOUT": setting("SOAK_VISIBILITY_TIMEOUT", "4"),
           "QUEUE_CONNECTION": "redis" if store == "redis" else "database",
           "DB_CONNECTION": "sqlite", "DB_DATABASE": str(tmp / "soak.sqlite"),
           "REDIS_URL": "", "REDIS_CLUSTER": "", "REDIS_HOST": "127.0.0.1",
           "REDIS_PORT": os.environ.get("BENCH_REDIS_PORT") or "6379",
           "REDIS_PASSWORD": "",
           "REDIS_DB": setting("SOAK_REDIS_DB", setting("TEST_REDIS_DB", "13").replace("-", ",").split(",")[0]),
           "REDIS_PREFIX": redis_prefix}
    if store in ("mysql", "redis"):      # Redis keeps its failed jobs in MySQL, which the cuts need
        env.update(DB_CONNECTION="mysql", DB_DATABASE=mysql_db, DB_HOST="127.0.0.1", DB_PORT="3306",
                   DB_USERNAME="root", DB_PASSWORD="")
    if store == "pgsql":
        env.update(DB_CONNECTION="pgsql", DB_DATABASE=mysql_db, DB_HOST="127.0.0.1", DB_PORT="5432",
                   DB_USERNAME=PGSQL_USER, DB_PASSWORD="")
    return env


def mysql(statement: str) -> None:
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def delete_redis_keys(db: str, prefix: str) -> None:
    import redis

    client = redis.Redis(db=int(db))
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


def soak(store: str, plan: ChaosPlan) -> bool:
    suffix = uuid.uuid4().hex[:8]
    mysql_db, redis_prefix = f"soak_jobs_{suffix}", f"soak-{suffix}:"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = environment(store, tmp, mysql_db, redis_prefix)
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            if store in ("mysql", "redis"):
                mysql(f"CREATE DATABASE `{mysql_db}`")
            elif store == "pgsql":
                pgsql_query(f'CREATE DATABASE "{mysql_db}"')
            report = asyncio.run(run_chaos(store, plan, tmp))
        finally:
            if store in ("mysql", "redis"):
                mysql(f"DROP DATABASE IF EXISTS `{mysql_db}`")
            elif store == "pgsql":
                pgsql_query(f'DROP DATABASE IF EXISTS "{mysql_db}" WITH (FORCE)')
            if store == "redis":
                delete_redis_keys(env["REDIS_DB"], redis_prefix)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        print(report.line(), flush=True)
        if not report.ok:
            kept = Path(tempfile.mkdtemp(prefix=f"soak-{store}-failed-"))
            shutil.copytree(tmp, kept, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sqlite*"))
            print("\n".join(["  " + p for p in report.problems[:40]] + [evidence(tmp, report),
                                                                         f"  logs kept in {kept}"]), flush=True)
    return report.ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="*", metavar="STORE", help="sqlite, mysql, pgsql, redis (default: all four)")
    parser.add_argument("--jobs", type=int, default=int(setting("SOAK_JOBS", "3000")))
    parser.add_argument("--seconds", type=float, default=float(setting("SOAK_SECONDS", "60")),
                        help="length of the chaos phase per store (dispatching and killing)")
    parser.add_argument("--workers", type=int, default=int(setting("SOAK_WORKERS", "4")))
    parser.add_argument("--concurrency", type=int, default=int(setting("SOAK_CONCURRENCY", "8")))
    parser.add_argument("--kill-every", type=float, default=float(setting("SOAK_KILL_EVERY", "2")))
    parser.add_argument("--seed", type=int, default=int(setting("SOAK_SEED", "0")) or None)
    parser.add_argument("--blockers", type=float, default=float(setting("SOAK_BLOCKERS", "0.1")))
    parser.add_argument("--dropped-answers", type=float, default=float(setting("SOAK_DROPPED_ANSWERS", "0.3")))
    parser.add_argument("--retry-every", type=float, default=float(setting("SOAK_RETRY_EVERY", "0.5")))
    parser.add_argument("--clears", type=int, default=int(setting("SOAK_CLEARS", "3")))
    parser.add_argument("--cut-every", type=float, default=float(setting("SOAK_CUT_EVERY", "5")))
    args = parser.parse_args()
    unknown = sorted(set(args.stores) - set(STORES))
    if unknown:
        parser.error(f"unknown store {', '.join(unknown)}: use {', '.join(STORES)}")
    plan = ChaosPlan(jobs=args.jobs, workers=args.workers, concurrency=args.concurrency, seconds=args.seconds,
                     kill_every=args.kill_every, drain_timeout=max(90.0, args.seconds), seed=args.seed,
                     blockers=args.blockers, dropped_answers=args.dropped_answers, retry_every=args.retry_every,
                     clears=args.clears, cut_every=args.cut_every)
    results = [soak(store, plan) for store in args.stores or STORES]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
