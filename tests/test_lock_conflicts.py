"""MySQL aborts one of two transactions that lock the same rows in opposite orders (a deadlock,
error 1213). queue:retry and queue:clear race the workers' transactions this way: the one
aborted is run again, not reported to the user."""
from __future__ import annotations

import asyncio

import pymysql

from core.config import DatabaseConfig
from core.database import Database
from tests.servers import MYSQL


async def test_a_transaction_aborted_by_a_deadlock_is_run_again(mysql_env):
    db = await Database.connect(DatabaseConfig(driver="mysql", database=mysql_env, host=MYSQL[0], port=MYSQL[1]))
    other = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="", database=mysql_env)
    try:
        await db.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        await db.execute("INSERT INTO t VALUES (1, 0), (2, 0)")
        # InnoDB aborts the transaction that changed fewer rows: the other side changes many first.
        await db.execute("CREATE TABLE heavy (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        await db.execute("INSERT INTO heavy VALUES " + ", ".join(f"({i}, 0)" for i in range(200)))
        runs = 0
        first_locked = asyncio.Event()

        async def attempt() -> str:
            nonlocal runs
            runs += 1
            async with db.transaction() as tx:
                await tx.execute("UPDATE t SET v = v + 1 WHERE id = 2")
                if runs == 1:
                    first_locked.set()
                    await asyncio.sleep(0.3)          # the other connection now holds row 1 and waits for row 2
                await tx.execute("UPDATE t SET v = v + 1 WHERE id = 1")
            return "done"

        def opposite_order() -> None:
            with other.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("UPDATE heavy SET v = v + 1")
                cur.execute("UPDATE t SET v = v + 10 WHERE id = 1")
                try:
                    cur.execute("UPDATE t SET v = v + 10 WHERE id = 2")     # blocks on our row 2
                    other.commit()
                except pymysql.err.OperationalError:
                    other.rollback()

        task = asyncio.create_task(db.retrying_conflicts(attempt))
        await first_locked.wait()
        blocker = asyncio.get_running_loop().run_in_executor(None, opposite_order)
        assert await task == "done"
        await blocker
        rows = dict(await db.fetchall("SELECT id, v FROM t"))
        assert runs == 2, "the transaction the deadlock aborted was not run again"
        assert rows == {1: 11, 2: 11}, rows      # the other side's +10 each, then ours once
    finally:
        other.close()
        await db.close()
