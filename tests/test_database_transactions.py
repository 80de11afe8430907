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


def hold_write_lock(seconds: float) -> threading.Thread:
    """Another connection takes SQLite's write lock for `seconds`, in a thread; started once it holds it."""
    held = threading.Event()

    def hold() -> None:
        other = sqlite3.connect(os.environ["DB_DATABASE"], isolation_level=None, timeout=5)
        other.execute("BEGIN IMMEDIATE")
        held.set()
        threading.Event().wait(seconds)
        other.execute("COMMIT")
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    return thread


async def test_a_push_a_transaction_and_an_async_transaction_wait_for_another_process_write_lock(conn):
    # SQLite's busy timeout is 0 on our connection: the waits are _run's own (core.database._busy_wait).
    for operation in (lambda: conn.push("busy", payload(1)),
                      lambda: conn.reserve_many(["busy"], 1),
                      lambda: conn.db.execute("INSERT INTO queue_signals (name, value) VALUES ('busy', 1)")):
        holder = hold_write_lock(0.3)
        started = asyncio.get_running_loop().time()
        await operation()
        assert asyncio.get_running_loop().time() - started >= 0.25
        await asyncio.to_thread(holder.join)
    holder = hold_write_lock(0.3)
    started = asyncio.get_running_loop().time()
    async with conn.db.transaction() as tx:      # its BEGIN IMMEDIATE (through _control) waits too
        await tx.execute("UPDATE queue_signals SET value = 3 WHERE name = 'busy'")
    assert asyncio.get_running_loop().time() - started >= 0.25
    await asyncio.to_thread(holder.join)
    assert await conn.db.fetchall("SELECT value FROM queue_signals WHERE name = 'busy'") == [(3.0,)]
    assert (await conn.sizes(["busy"]))["busy"].reserved == 1


async def test_a_write_lock_held_past_the_busy_timeout_is_an_error_and_nothing_is_stored(conn, monkeypatch):
    import core.database

    monkeypatch.setattr(core.database, "BUSY_TIMEOUT", 0.2)
    holder = hold_write_lock(1.0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await conn.db.run_transaction(conn._push_many_steps("late", [[payload(1)]], 0))
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await conn.db.execute("INSERT INTO queue_signals (name, value) VALUES ('late', 1)")
    await asyncio.to_thread(holder.join)
    assert not conn.db._conn.in_transaction
    assert (await conn.sizes(["late"]))["late"].pending == 0
    assert await conn.db.fetchall("SELECT value FROM queue_signals WHERE name = 'late'") == []
