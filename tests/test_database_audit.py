"""Issue 11 (the "Nothing lost, for real" audit), database side: one regression test per finding.

Each runs on SQLite and on MySQL/MariaDB (a fresh database each) unless the finding is one store's.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pymysql
import pytest

from bootstrap.app import create_app
from core.database import MysqlDatabase
from core.queue import database as database_module
from core.queue.contract import KeptResult
from core.queue.database import DatabaseQueue
from core.queue.failed import FailedJobStore
from tests.conftest import ROOT, store_env
from tests.contract.conftest import configure, payload
from tests.servers import MYSQL, PGSQL, PGSQL_USER


@pytest.fixture(params=["sqlite", "mysql", "pgsql"])
async def app(request, monkeypatch):
    store_env(request, request.param)
    configure(monkeypatch, "database")
    async with create_app() as application:
        yield application


async def queue_of(app) -> DatabaseQueue:
    return await app.queue.connection("database")


def mysql_connection() -> pymysql.Connection:
    return pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="", database=os.environ["DB_DATABASE"],
                           autocommit=True, charset="utf8mb4")


def uuid_of(raw: str) -> str:
    return json.loads(raw)["uuid"]


async def pending(conn, queue: str) -> dict[str, int]:
    return (await conn.sizes([queue]))[queue].as_dict()


# -- finding 1: a cut transaction leaves its connection clean ---------------------------------------------------


async def test_a_transaction_cut_while_waiting_for_the_sqlite_lock_leaves_no_transaction_open(monkeypatch):
    configure(monkeypatch, "database")
    async with create_app() as app:
        conn = await queue_of(app)
        holder = sqlite3.connect(os.environ["DB_DATABASE"], isolation_level=None, timeout=0)
        holder.execute("BEGIN IMMEDIATE")          # another process holds the write lock
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.push_many("audit", [payload(1)]), 0.3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.reserve_many(["audit"], 5), 0.3)
        holder.execute("COMMIT")
        later = payload(2)
        await conn.push("audit", later)          # runs after the cut BEGINs did, in this connection
        other = sqlite3.connect(os.environ["DB_DATABASE"], isolation_level=None, timeout=2)
        assert later in [p for (p,) in other.execute("SELECT payload FROM jobs")]
        other.execute("BEGIN IMMEDIATE")         # the file is not left locked
        other.execute("COMMIT")
        assert not conn.db._conn.in_transaction
        assert [j.payload for j in await conn.reserve_many(["audit"], 5)] == [later]
        holder.close()
        other.close()


async def cut_while_row_locked(job, call) -> pymysql.Connection:
    """Another connection holds `job`'s row lock while `call()` runs, and `call()` is cut (0.5 s) waiting
    for it; the lock is let go after. The holder's connection, still open."""
    holder = mysql_connection()
    with holder.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (int(job.id),))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(), 0.5)
        cur.execute("COMMIT")
    return holder


async def test_a_transaction_cut_while_waiting_for_a_mysql_row_lock_leaves_no_transaction_open(mysql_env, monkeypatch):
    configure(monkeypatch, "database")
    async with create_app() as app:
        conn = await queue_of(app)
        await conn.push("audit", payload(1))
        job = await conn.reserve(["audit"])
        holder = await cut_while_row_locked(job, lambda: conn.fail(job, "RuntimeError: boom"))   # round trips
        assert all(not c.get_transaction_status() for c in conn.db._pool._free)
        assert await conn.fail(job, "RuntimeError: boom") is True
        later = payload(2)
        await conn.push("audit", later)
        with holder.cursor() as cur:
            cur.execute("SELECT payload FROM jobs")
            assert [p for (p,) in cur.fetchall()] == [later]
        holder.close()


@pytest.mark.parametrize("store", ["mysql", "pgsql"])
async def test_closing_the_database_while_a_cancelled_statement_gives_back_its_connection_ends(store, request,
                                                                                               monkeypatch):
    """An application closing (a worker's exit, the MQTT app's stop) while a statement of a task that is
    then cancelled still holds a pooled connection: the close ends, and the task ends cancelled. (The
    close dropped its pool first, so the task's release failed with AttributeError and its connection
    never came back; and aiomysql's wait_closed() is not woken by a connection closed by its user: the
    close waited for good.)"""
    store_env(request, store)
    configure(monkeypatch, "database")
    async with create_app() as app:
        db = (await queue_of(app)).db
        sleep = "SELECT SLEEP(3)" if store == "mysql" else "SELECT pg_sleep(3)"
        statement = asyncio.create_task(db.fetchall(sleep))
        await asyncio.sleep(0.3)            # the statement is on the server
        closing = asyncio.create_task(db.close())
        await asyncio.sleep(0.1)
        statement.cancel()
        await asyncio.wait_for(closing, 10)
        with pytest.raises(asyncio.CancelledError):
            await statement


async def test_a_mysql_acknowledgement_cut_while_waiting_for_a_row_lock_acknowledges_once(mysql_env, monkeypatch):
    configure(monkeypatch, "database")
    async with create_app() as app:
        conn = await queue_of(app)
        await conn.push("audit", payload(1))
        job = await conn.reserve(["audit"])
        holder = await cut_while_row_locked(job, lambda: conn.acknowledge_many([job]))
        # Its statements went out whole: cut off, the acknowledgement may still have committed on the
        # server. Either way it happened once, nothing is left open, and the job is not handed out again.
        assert all(not c.get_transaction_status() for c in conn.db._pool._free)
        await conn.acknowledge_many([job])
        assert await conn.reserve(["audit"]) is None
        later = payload(2)
        await conn.push("audit", later)
        with holder.cursor() as cur:
            cur.execute("SELECT payload FROM jobs")
            assert [p for (p,) in cur.fetchall()] == [later]
            cur.execute("SELECT COUNT(*) FROM finished_jobs WHERE uuid = %s", (uuid_of(job.payload),))
            assert cur.fetchone() == (1,)
        holder.close()


def _row_locked_by_another(store: str, job_id: int) -> bool:
    """Whether another transaction holds `job_id`'s row lock now: a probe from its own connection, run
    synchronously, as job code blocking the loop would run."""
    if store == "mysql":
        probe = mysql_connection()
        try:
            with probe.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
                cur.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
            return False
        except pymysql.err.OperationalError:
            return True
        finally:
            probe.close()
    import asyncpg

    async def probe() -> bool:        # waits up to 1 s, as the MySQL probe does: a statement in flight ends
        conn = await asyncpg.connect(host=PGSQL[0], port=PGSQL[1], user=PGSQL_USER, database=os.environ["DB_DATABASE"],
                                     server_settings={"lock_timeout": "1000"})
        try:
            await conn.execute(f"SELECT id FROM jobs WHERE id = {int(job_id)} FOR UPDATE")
            return False
        except asyncpg.exceptions.LockNotAvailableError:
            return True
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, probe()).result()


@pytest.mark.parametrize("store", ["mysql", "pgsql"])
@pytest.mark.parametrize("call", ["acknowledge_many", "acknowledge_and_reserve", "complete_many"])
async def test_an_acknowledgement_holds_no_row_lock_while_job_code_blocks_the_worker_loop(store, call, request,
                                                                                        monkeypatch):
    """Job code that blocks the loop (a sync call in handle(), or in a listener beside a worker at
    concurrency 1, whose acknowledgement goes with its next reserve) while an acknowledgement is in
    flight must not keep the acknowledged rows locked: the heartbeat's renewal skips locked rows, so a
    store cut then rolled the acknowledgement back after the reservation had lapsed (a second run).
    complete_many is the acknowledgement of jobs that keep a result (SPEC 11): found on PostgreSQL by
    the chaos suite, where it was a transaction of several round trips."""
    store_env(request, store)
    configure(monkeypatch, "database")
    async with create_app() as app:
        conn = await queue_of(app)
        await conn.push_many("audit", [payload(n) for n in range(4)])
        jobs = await conn.reserve_many(["audit"], 3)

        async def acknowledge() -> list[bool]:
            if call == "acknowledge_many":
                return await conn.acknowledge_many(jobs)
            if call == "complete_many":
                records = [KeptResult(json.dumps({"result": {"n": n}}), 60) for n in range(3)]
                return await conn.complete_many(jobs, records)
            done, taken = await conn.acknowledge_and_reserve(jobs, "audit", "next-claim")
            assert len(taken) == 1
            return done

        acknowledging = asyncio.create_task(acknowledge())
        locked_out = False
        while not acknowledging.done() and not locked_out:
            await asyncio.sleep(0)            # the acknowledgement goes on, a step at a time...
            locked_out = _row_locked_by_another(store, int(jobs[0].id))   # ... blocking job code between
        acknowledged = await acknowledging
        assert not locked_out
        assert acknowledged == [True, True, True]
        if call == "complete_many":
            status = await conn.job_status("audit", uuid_of(jobs[2].payload))
            assert (status.state, status.result) == ("completed", {"n": 2})


# -- finding 13: reserve cost does not grow with the delayed jobs ahead -----------------------------------------


async def _sqlite_steps(conn: DatabaseQueue, queue: str) -> int:
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    await conn.db._conn.set_progress_handler(count, 1)
    job = await conn.reserve([queue])
    await conn.db._conn.set_progress_handler(None, 1)
    assert job is not None and await conn.acknowledge(job)
    return steps


async def _mysql_reads(conn: DatabaseQueue, queue: str) -> int:
    async def reads() -> int:
        rows = await conn.db.fetchall("SHOW SESSION STATUS LIKE 'Handler_read%'")
        return sum(int(value) for _, value in rows)

    start = await reads()
    before = await reads()                 # SHOW STATUS counts its own reads: (before - start) of them
    job = await conn.reserve([queue])
    after = await reads()
    assert job is not None and await conn.acknowledge(job)
    return (after - before) - (before - start)


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_reserve_cost_does_not_grow_with_the_delayed_jobs_ahead(kind, request, monkeypatch):
    if kind == "mysql":
        request.getfixturevalue("mysql_env")
    configure(monkeypatch, "database")
    async with create_app() as app:
        if kind == "mysql":   # one pooled connection, so its session counters see every statement
            db = MysqlDatabase(app.config.database, maxsize=1)
            await db.open()
            conn = DatabaseQueue(db, FailedJobStore(db))
            await conn.migrate()
            measure = _mysql_reads
        else:
            conn, measure = await queue_of(app), _sqlite_steps
        await conn.push_many("flat", [payload(n) for n in range(3)])
        await conn.push_many("deep", [payload(n) for n in range(3000)], delay=3600)
        await conn.push_many("deep", [payload(n) for n in range(3)])
        await measure(conn, "flat")            # warm up: statements prepared, pages cached
        await measure(conn, "deep")
        flat, deep = await measure(conn, "flat"), await measure(conn, "deep")
        assert deep < 1.5 * flat + 50, (flat, deep)
        if kind == "mysql":
            await conn.db.close()


# -- finding 14: a MySQL batch over max_allowed_packet ----------------------------------------------------------


async def test_a_mysql_batch_larger_than_max_allowed_packet_is_stored_whole(mysql_env, monkeypatch):
    configure(monkeypatch, "database")
    async with create_app() as app:
        conn = await queue_of(app)
        with mysql_connection().cursor() as cur:
            cur.execute("SELECT @@max_allowed_packet")
            packet = int(cur.fetchone()[0])
        each = 2**20
        payloads = [payload(n, blob="x" * each) for n in range(packet // each + 4)]
        await conn.push_many("big", payloads)
        assert (await pending(conn, "big"))["pending"] == len(payloads)
        assert [j.payload for j in await conn.reserve_many(["big"], 3)] == payloads[:3]


# -- finding 16: a lazily booted app on MySQL -------------------------------------------------------------------


LAZY_SCRIPT = """
import asyncio
from app.jobs.send_email_job import SendEmailJob
from core.app import current

async def dispatch():
    print(await SendEmailJob.dispatch(to="a@example.com", subject="x"))

async def failed_count():
    print(len(await (await current().queue.failed_store()).all()))

asyncio.run(dispatch())
asyncio.run(failed_count())
asyncio.run(dispatch())
asyncio.run(failed_count())
"""


def test_a_lazily_booted_app_on_mysql_across_two_event_loops_exits_cleanly(mysql_env):
    result = subprocess.run([sys.executable, "-c", LAZY_SCRIPT], cwd=ROOT, env=dict(os.environ),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""                # no "Event loop is closed" traceback at exit
    lines = result.stdout.split()
    assert len(lines[0]) == 36 and lines[1] == "0" and len(lines[2]) == 36 and lines[3] == "0"


# -- findings 2, 5, 11: the finished record ---------------------------------------------------------------------


async def test_an_acknowledged_job_pushed_again_is_dropped_at_reserve(app, caplog):
    conn, raw = await queue_of(app), payload(1)
    await conn.push("audit", raw)
    job = await conn.reserve(["audit"])
    assert await conn.acknowledge(job)
    await conn.push("audit", raw)               # a repeated push (a replayed dispatch)
    with caplog.at_level(logging.WARNING, logger="worker"):
        assert await conn.reserve(["audit"]) is None
    assert f"{uuid_of(raw)} already ran; a repeated push of it was dropped" in caplog.messages
    assert await pending(conn, "audit") == {"pending": 0, "delayed": 0, "reserved": 0}


async def test_an_acknowledgement_remembers_a_uuid_of_any_printable_text(app):
    # On PostgreSQL the acknowledgement's uuids go as one array parameter, not a VALUES row each.
    conn = await queue_of(app)
    raw, plain = payload(1), payload(2)
    odd = raw.replace(uuid_of(raw), "odd-é-✓-ü", 1)
    await conn.push_many("odd", [odd, plain])
    jobs = await conn.reserve_many(["odd"], 2)
    assert await conn.acknowledge_many(jobs) == [True, True]
    await conn.push_many("odd", [odd, plain])        # repeated pushes of both: both dropped
    assert await conn.reserve_many(["odd"], 2) == []
    assert await pending(conn, "odd") == {"pending": 0, "delayed": 0, "reserved": 0}


async def test_a_failed_job_pushed_again_is_dropped_and_a_fresh_one_still_runs(app):
    conn, raw, fresh = await queue_of(app), payload(1), payload(2)
    await conn.push("audit", raw)
    assert await conn.fail(await conn.reserve(["audit"]), "RuntimeError: boom")
    await conn.push_many("audit", [raw, fresh])
    assert [j.payload for j in await conn.reserve_many(["audit"], 5)] == [fresh]


async def test_a_push_of_a_stored_uuid_is_a_no_op(app):
    conn, raw = await queue_of(app), payload(1)
    await conn.push("audit", raw)
    await conn.push("audit", raw)
    await conn.push_many("audit", [raw])
    assert (await pending(conn, "audit"))["pending"] == 1


async def test_push_missing_leaves_out_jobs_stored_or_finished(app):
    conn = await queue_of(app)
    stored, finished, lost = payload(1), payload(2), payload(3)
    await conn.push("audit", finished)
    assert await conn.acknowledge(await conn.reserve(["audit"]))
    await conn.push("audit", stored)
    await conn.push_missing("audit", [stored, finished, lost])
    assert [j.payload for j in await conn.reserve_many(["audit"], 5)] == [stored, lost]


async def test_the_finished_record_lasts_the_replay_window_and_is_pruned(app, monkeypatch):
    conn, raw = await queue_of(app), payload(1)
    conn.replay_window = 1
    await conn.push("audit", raw)
    assert await conn.acknowledge(await conn.reserve(["audit"]))
    await asyncio.sleep(2.2)
    await conn.push("audit", raw)              # remembered no longer: a push of it runs
    job = await conn.reserve(["audit"])
    assert job is not None and job.payload == raw
    monkeypatch.setattr(database_module, "PRUNE_EVERY", 1)
    monkeypatch.setattr(database_module, "PRUNE_LIMIT", 3)
    for n in range(5):
        await conn.db.execute("INSERT INTO finished_jobs (uuid, finished_at) VALUES (?, ?)", (f"old-{n}", n))
    assert await conn.acknowledge(job)        # prunes at most PRUNE_LIMIT old records, oldest first
    left = {u for (u,) in await conn.db.fetchall("SELECT uuid FROM finished_jobs")}
    assert left == {"old-3", "old-4", uuid_of(raw)}


# -- finding 7/8: requeue ---------------------------------------------------------------------------------------


async def test_requeue_takes_over_a_job_still_held_and_fences_out_its_holder(app):
    conn = await queue_of(app)
    first, second = payload(1), payload(2)
    await conn.push_many("audit", [first, second])
    held = await conn.reserve(["audit"])
    assert await conn.mark_failing(held, "RuntimeError: boom")
    await conn.requeue("audit", first)
    assert await pending(conn, "audit") == {"pending": 2, "delayed": 0, "reserved": 0}
    again = await conn.reserve(["audit"])       # at its place, attempts reset, no failing mark
    assert (again.payload, again.attempts, again.failing, again.failed_ran) == (first, 1, None, False)
    assert held.attempts == again.attempts and held.token != again.token
    assert await conn.acknowledge(held) is False
    assert await conn.release(held) is False
    assert await conn.fail(held, "late") is False
    assert await conn.mark_failing(held, "late") is False
    assert await conn.acknowledge(again) is True


async def test_requeue_forgets_the_finished_record(app):
    conn, raw = await queue_of(app), payload(1)
    await conn.push("audit", raw)
    assert await conn.fail(await conn.reserve(["audit"]), "RuntimeError: boom")
    await conn.requeue("audit", raw)
    job = await conn.reserve(["audit"])
    assert job is not None and (job.payload, job.attempts) == (raw, 1)


async def test_queue_retry_puts_a_failed_job_back_to_run(app):
    from core.queue.retry import retry_failed

    conn, raw = await queue_of(app), payload(1)
    await conn.push("audit", raw)
    assert await conn.fail(await conn.reserve(["audit"]), "RuntimeError: boom")
    result = await retry_failed(app, None)
    assert [j.uuid for j in result.retried] == [uuid_of(raw)]
    job = await conn.reserve(["audit"])
    assert job is not None and job.payload == raw
    assert await (await app.queue.failed_store()).all() == []


# -- finding 9: the failing mark --------------------------------------------------------------------------------


async def test_a_failing_mark_is_fenced_kept_with_the_job_and_cleared_by_release(app):
    conn, raw = await queue_of(app), payload(1)
    conn.visibility_timeout = 1
    await conn.push("audit", raw)
    job = await conn.reserve(["audit"])
    assert await conn.mark_failing(job, "RuntimeError: boom")
    assert await conn.mark_failing(job, "RuntimeError: boom")        # repeated (a retried call): still held
    await asyncio.sleep(2.2)                                         # its worker died
    again = await conn.reserve(["audit"])
    assert (again.attempts, again.failing, again.failed_ran) == (2, "RuntimeError: boom", False)
    assert await conn.mark_failing(job, "stale") is False
    assert await conn.mark_failing(again, "RuntimeError: boom", failed_ran=True)
    await asyncio.sleep(2.2)
    third = await conn.reserve(["audit"])
    assert (third.attempts, third.failing, third.failed_ran) == (3, "RuntimeError: boom", True)
    assert await conn.release(third)
    fourth = await conn.reserve(["audit"])
    assert (fourth.attempts, fourth.failing, fourth.failed_ran) == (4, None, False)


# -- finding 11: claims -----------------------------------------------------------------------------------------


async def test_recover_returns_what_a_claimed_reserve_still_holds(app):
    conn = await queue_of(app)
    await conn.push_many("audit-high", [payload(1)])
    await conn.push_many("audit-low", [payload(2), payload(3)])
    queues = ["audit-high", "audit-low"]
    taken = await conn.reserve_many(queues, 3, claim="c0ffee")
    recovered = await conn.recover(queues, "c0ffee")
    assert [(j.id, j.queue, j.payload, j.attempts, j.token) for j in recovered] == \
        [(j.id, j.queue, j.payload, j.attempts, j.token) for j in taken]
    assert await conn.recover(queues, "another") == []
    assert await conn.acknowledge(recovered[0])
    assert [j.id for j in await conn.recover(queues, "c0ffee")] == [j.id for j in taken[1:]]
    assert await conn.release(taken[1])
    assert [j.id for j in await conn.recover(queues, "c0ffee")] == [taken[2].id]
    assert (await pending(conn, "audit-low"))["reserved"] == 1      # no attempt counted, nothing moved


# -- migration from the previous release ------------------------------------------------------------------------

# The previous release's schema, as in git show HEAD~:core/queue/database.py before this work.
OLD_SCHEMA = {
    "sqlite": [
        """CREATE TABLE IF NOT EXISTS jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            queue VARCHAR(255) NOT NULL,
            payload TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            reserved_at INTEGER NULL,
            available_at INTEGER NOT NULL,
            created_at INTEGER NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS jobs_queue_index ON jobs (queue, id)",
        "CREATE TABLE IF NOT EXISTS queue_signals (name VARCHAR(64) PRIMARY KEY, value DOUBLE NOT NULL)",
    ],
    "mysql": [
        """CREATE TABLE IF NOT EXISTS jobs (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            queue VARCHAR(255) NOT NULL,
            payload LONGTEXT NOT NULL,
            attempts INT UNSIGNED NOT NULL DEFAULT 0,
            reserved_at INT UNSIGNED NULL,
            available_at INT UNSIGNED NOT NULL,
            created_at INT UNSIGNED NOT NULL,
            INDEX jobs_queue_index (queue)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS queue_signals (
            name VARCHAR(64) NOT NULL PRIMARY KEY, value DOUBLE NOT NULL) ENGINE=InnoDB""",
    ],
}
OLD_PUSH = ("INSERT INTO jobs (queue, payload, attempts, reserved_at, available_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)")


class OldRelease:
    """The tables and rows as the previous release wrote them, through a plain driver connection."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "sqlite":
            self.db = sqlite3.connect(os.environ["DB_DATABASE"], isolation_level=None)
        else:
            self.db = mysql_connection()

    def run(self, sql: str, params: tuple = ()) -> None:
        if self.kind == "sqlite":
            self.db.execute(sql, params)
        else:
            with self.db.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params or None)

    def push(self, queue: str, raw: str, attempts: int = 0, reserved_at: int | None = None,
             available_at: int | None = None) -> None:
        now = int(time.time())
        self.run(OLD_PUSH, (queue, raw, attempts, reserved_at, now if available_at is None else available_at, now))


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_a_database_of_the_previous_release_keeps_its_jobs_after_migrate(kind, request, monkeypatch):
    if kind == "mysql":
        request.getfixturevalue("mysql_env")
    configure(monkeypatch, "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "60")
    old = OldRelease(kind)
    for statement in OLD_SCHEMA[kind]:
        old.run(statement)
    now = int(time.time())
    ready, delayed, held, lapsed, soon = (payload(n) for n in range(5))
    old.push("m", held, attempts=1, reserved_at=now)
    old.push("m", ready)
    old.push("m", delayed, available_at=now + 3600)
    old.push("m", lapsed, attempts=1, reserved_at=now - 1000)
    old.push("m", soon, available_at=now + 2)

    async with create_app() as app:                  # first use migrates
        conn = await queue_of(app)
        await conn.migrate()                         # and the command again: nothing to do
        # The lapsed reservation (its worker gone 1000 s ago) is due again: pending, as status() says.
        assert await pending(conn, "m") == {"pending": 2, "delayed": 2, "reserved": 1}
        taken = await conn.reserve_many(["m"], 10)
        assert [(j.payload, j.attempts) for j in taken] == [(ready, 1), (lapsed, 2)]
        # SPEC 9 columns added: no releases yet, due when pushed (created_at, the database's clock)
        assert [(j.releases, j.pushed_at == j.due_at <= j.now) for j in taken] == [(0, True), (0, True)]
        old.push("m", later := payload(7))           # an older release still dispatching
        old.push("m", payload(8), available_at=int(time.time()) + 3600)
        assert [j.payload for j in await conn.reserve_many(["m"], 10)] == [later]
        assert await conn.acknowledge_many(taken) == [True, True]
        await asyncio.sleep(3.2)
        assert [j.payload for j in await conn.reserve_many(["m"], 10)] == [soon]
        await conn.push("m", fresh := payload(9))
        assert [j.payload for j in await conn.reserve_many(["m"], 10)] == [fresh]
        await conn.push("m", ready)                  # finished: remembered, dropped
        assert await conn.reserve_many(["m"], 10) == []
        assert await pending(conn, "m") == {"pending": 0, "delayed": 2, "reserved": 4}
    old.db.close()


async def test_the_replay_window_comes_from_config(monkeypatch):
    configure(monkeypatch, "database")
    monkeypatch.setenv("QUEUE_REPLAY_WINDOW", "420")
    async with create_app() as app:
        assert (await queue_of(app)).replay_window == 420
