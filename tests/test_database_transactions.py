"""Transactions as steps (core.database): on SQLite each runs whole in aiosqlite's thread, one hop
per queue operation, and a caller cut mid-way leaves nothing committed and nothing open."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import threading

import pytest

from bootstrap.app import create_app
from core.database import change, fetch
from core.queue.database import DatabaseQueue
from tests.contract.conftest import configure, payload


@pytest.fixture
async def conn(monkeypatch):
    configure(monkeypatch, "database")
    async with create_app() as app:
        yield await app.queue.connection("database")


def count_hops(conn: DatabaseQueue, monkeypatch) -> list[str]:
    """Every call queued on aiosqlite's thread, by the name of what it runs."""
    hops: list[str] = []
    aconn = conn.db._conn
    original = aconn._execute

    async def counted(fn, *args, **kwargs):
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(aconn, "_execute", counted)
    return hops


async def test_each_queue_operation_on_sqlite_is_one_thread_hop(conn, monkeypatch):
    hops = count_hops(conn, monkeypatch)
    await conn.push_many("hops", [payload(n) for n in range(5)])
    assert len(hops) == 1
    jobs = await conn.reserve_many(["hops"], 3)
    assert len(jobs) == 3 and len(hops) == 2
    assert await conn.acknowledge_many(jobs[:2]) == [True, True] and len(hops) == 3
    assert await conn.fail(jobs[2], "boom") and len(hops) == 4
    await conn.push("hops", payload(9))
    assert len(hops) == 5


async def test_a_caller_cut_mid_transaction_commits_nothing_and_leaves_nothing_open(conn):
    started, go_on = threading.Event(), threading.Event()

    def steps():
        yield change("INSERT INTO queue_signals (name, value) VALUES ('cut', 1)")
        started.set()
        go_on.wait(5)               # in aiosqlite's thread: the caller is cut meanwhile
        yield change("UPDATE queue_signals SET value = 2 WHERE name = 'cut'")

    task = asyncio.ensure_future(conn.db.run_transaction(steps()))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    go_on.set()
    # The next operation queues behind the cut one and finds it rolled back.
    assert await conn.db.fetchall("SELECT value FROM queue_signals WHERE name = 'cut'") == []
    assert not conn.db._conn.in_transaction
    other = sqlite3.connect(os.environ["DB_DATABASE"], isolation_level=None, timeout=2)
    other.execute("BEGIN IMMEDIATE")            # the file is not left locked
    other.execute("COMMIT")
    other.close()


async def test_steps_that_raise_roll_back_and_the_error_reaches_the_caller(conn):
    def steps():
        yield change("INSERT INTO queue_signals (name, value) VALUES ('raised', 1)")
        rows = yield fetch("SELECT value FROM queue_signals WHERE name = 'raised'")
        assert rows == [(1.0,)]
        raise LookupError("steps failed")

    with pytest.raises(LookupError, match="steps failed"):
        await conn.db.run_transaction(steps())
    assert await conn.db.fetchall("SELECT value FROM queue_signals WHERE name = 'raised'") == []
    assert not conn.db._conn.in_transaction


async def test_steps_run_inside_a_callers_async_transaction_too(conn):
    # Steps written for run_transaction also run statement by statement in a caller's transaction.
    async with conn.db.transaction() as tx:
        await tx.run(conn._requeue_steps("inside", payload(1)))
        assert await tx.fetchone("SELECT COUNT(*) FROM jobs WHERE queue = 'inside'") == (1,)
    assert (await conn.sizes(["inside"]))["inside"].pending == 1


@pytest.mark.parametrize("begin", ["BEGIN IMMEDIATE", "BEGIN"])
async def test_a_new_sqlite_file_written_by_another_process_opens_once_it_lets_go(tmp_path, begin):
    """Workers started together on a database file that does not exist yet: one creates its tables
    while another opens it. Switching a file in rollback mode to WAL needs it to itself, and SQLite
    answers "database is locked" at once, without waiting out the busy timeout; the opening worker
    exited with "Cannot open SQLite database" and its supervisor restarted it. It waits instead."""
    from core.database import SqliteDatabase

    path = tmp_path / "fresh.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute(begin)
    other.execute("CREATE TABLE made_by_the_other (x)")
    let_go = threading.Timer(0.3, other.execute, ["COMMIT"])
    let_go.start()
    db = SqliteDatabase(path, wake=False)
    try:
        await db.open()
        assert await db.fetchone("PRAGMA journal_mode") == ("wal",)
        assert await db.fetchall("SELECT x FROM made_by_the_other") == []
    finally:
        let_go.join()
        await db.close()
        other.close()
