"""A renewal on MySQL never waits for a row lock another transaction holds (SPEC 5: a live worker
keeps extending the reservations of the jobs it is running).

Found by the chaos suite (a live worker's jobs all "taken over" together, run again by another
worker): the heartbeat renews every job a worker holds in one transaction, from its own thread.
The worker's loop acknowledges a finished job in a transaction of several statements; when job
code blocks the loop between two of them, that transaction keeps the finished job's row locked,
and the heartbeat's UPDATE of that row waited for it, holding up the renewal of every other job
until their reservations lapsed. Here the held-up acknowledgement is another connection's
transaction that locks one held row, as the worker's own does.
"""
from __future__ import annotations

import asyncio

import pymysql
import pytest

from bootstrap.app import create_app
from tests.jobs.sample_jobs import RecordingJob
from tests.servers import MYSQL

VISIBILITY = 2


@pytest.fixture
def mysql_queue(mysql_env, monkeypatch) -> str:
    monkeypatch.setenv("QUEUE_CONNECTION", "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", str(VISIBILITY))
    return mysql_env


async def test_a_renewal_skips_a_row_an_acknowledgement_holds_and_renews_the_others(mysql_queue, tmp_path):
    async with create_app() as app, create_app() as other_app:
        conn = await app.queue.connection()
        other = await other_app.queue.connection()
        for _ in range(2):
            await RecordingJob.dispatch(log=str(tmp_path / "events"))
        finished, running = held = await conn.reserve_many(["default"], 2)
        locker = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="", database=mysql_queue)
        try:
            with locker.cursor() as cur:        # the acknowledgement of `finished`, held up mid-transaction
                cur.execute("BEGIN")
                cur.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (int(finished.id),))
            # Renewing as the heartbeat does, for longer than the visibility timeout: no renewal may
            # wait for the locked row, or `running` lapses behind it.
            for _ in range(4):
                await asyncio.wait_for(conn.extend(held), 1.0)
                await asyncio.sleep(VISIBILITY / 2)
            assert await other.reserve_many(["default"], 2) == [], "a reservation lapsed although it was renewed"
        finally:
            locker.rollback()
            locker.close()
        assert await conn.acknowledge_many(held) == [True, True]
        assert (await conn.sizes(["default"]))["default"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
