"""Hostile input tests' helpers: writing jobs straight into a store, as someone with write access but no
APP_KEY would (plain SQL into the `jobs` table, plain Redis commands in the connection's key layout of
core/queue/redis.py), and draining a queue within a bounded time."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid

import pymysql
import redis

from tests.servers import MYSQL, REDIS, pgsql_query


class RawStore:
    """`push(payload)` puts one job, ready now, on a queue; the payload may be text or any bytes."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.db = sqlite3.connect(os.environ["DB_DATABASE"], isolation_level=None)
        elif backend == "mysql":
            self.db = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="",
                                      database=os.environ["DB_DATABASE"], autocommit=True, charset="utf8mb4")
        elif backend == "pgsql":
            self.db = None
        else:
            self.db = redis.Redis(host=REDIS[0], port=REDIS[1], db=int(os.environ["REDIS_DB"]))

    def push(self, payload: str | bytes, queue: str = "default", job_id: str | bytes | None = None) -> None:
        if self.backend == "sqlite":
            # CAST(? AS TEXT): bytes land as TEXT, as another program writing the table could leave them.
            self.db.execute("INSERT INTO jobs (queue, payload, attempts, reserved_at, available_at, created_at) "
                            "VALUES (?, CAST(? AS TEXT), 0, NULL, strftime('%s','now'), strftime('%s','now'))",
                            (queue, payload))
        elif self.backend == "mysql":
            if isinstance(payload, bytes):   # utf8mb4 refuses other bytes: an attacker can only store text
                payload = payload.decode("utf-8", "replace")
            with self.db.cursor() as cur:
                cur.execute("INSERT INTO jobs (queue, payload, attempts, reserved_at, available_at, created_at) "
                            "VALUES (%s, %s, 0, NULL, UNIX_TIMESTAMP(), UNIX_TIMESTAMP())", (queue, payload))
        elif self.backend == "pgsql":
            # TEXT holds no NUL and only UTF-8: an attacker can store only that.
            if isinstance(payload, bytes):
                payload = payload.decode("utf-8", "replace")
            payload = payload.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\x00", "\ufffd")
            # Whole seconds rounded down, as the queue's own clock (PgsqlDialect.now): a cast to bigint
            # rounds to the nearest, up to half a second ahead, and a worker started within it finds
            # the job not due yet and stops "queue empty" without it.
            pgsql_query("INSERT INTO jobs (queue, payload, attempts, reserved_at, available_at, created_at) VALUES "
                        "($1, $2, 0, NULL, FLOOR(EXTRACT(EPOCH FROM now()))::bigint, "
                        "FLOOR(EXTRACT(EPOCH FROM now()))::bigint)",
                        queue, payload, database=os.environ["DB_DATABASE"])
        else:
            base = f"queues:{{{queue}}}"
            job_id = job_id or f"raw-{uuid.uuid4().hex}"
            seq = self.db.incr(f"{base}:seq")
            self.db.hset(f"{base}:jobs", job_id, payload)
            self.db.hset(f"{base}:jobs", (job_id if isinstance(job_id, bytes) else job_id.encode()) + b":seq", seq)
            self.db.zadd(base, {job_id: seq})
            self.db.rpush(f"{base}:notify", 1)

    def spoil(self, job_id: str, payload: str, queue: str = "default") -> None:
        """Overwrite a dispatched job's stored payload, its id left as it was."""
        if self.backend == "sqlite":
            self.db.execute("UPDATE jobs SET payload = ? WHERE uuid = ?", (payload, job_id))
        elif self.backend == "mysql":
            with self.db.cursor() as cur:
                cur.execute("UPDATE jobs SET payload = %s WHERE uuid = %s", (payload, job_id))
        elif self.backend == "pgsql":
            pgsql_query("UPDATE jobs SET payload = $1 WHERE uuid = $2", payload, job_id,
                        database=os.environ["DB_DATABASE"])
        else:
            self.db.hset(f"queues:{{{queue}}}:jobs", job_id, payload)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


async def drain(app, limit: float = 90, **options):
    """Work the queue until it is empty, as tests/test_worker.py's `work`, but failing after `limit`
    seconds: a poison job that jams the queue must fail the test, not hang it."""
    from tests.test_worker import work

    try:
        return await asyncio.wait_for(work(app, **options), limit)
    except TimeoutError:
        raise AssertionError(f"the queue was not drained within {limit:g}s: a job is stuck") from None
