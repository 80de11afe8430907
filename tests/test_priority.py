"""SPEC 11 priority through `python main.py queue:work` on SQLite, MySQL and Redis: within a queue,
due jobs run by priority, then in dispatch order; a delayed job coming due and a retry take their
(priority, dispatch order) place; the order of --queue beats priority. And `migrate` on a database
of the release before priority existed."""
from __future__ import annotations

import asyncio

import pytest

from bootstrap.app import create_app
from core.payload import peek_uuid
from tests.contract.conftest import configure, payload
from tests.jobs.sample_jobs import read_events
from tests.jobs.status_jobs import FlakyOrderJob, OrderJob

pytestmark = pytest.mark.slow


async def run_all(store, *args: str) -> None:
    worker = store.start_worker("--stop-when-empty", "--concurrency", "1", *args)
    assert await asyncio.to_thread(worker.wait, 60) == 0, store.worker_logs()


def order(log) -> list[str]:
    return [e["name"] for e in read_events(log) if e["event"] == "ran"]


async def test_higher_priority_runs_first_then_dispatch_order(store, tmp_path):
    log = str(tmp_path / "events")
    for n in range(5):
        await OrderJob.dispatch(log=log, name=f"p0-{n}")
    await OrderJob.dispatch(log=log, name="p50").priority(50)
    await OrderJob.dispatch(log=log, name="p-5").priority(-5)
    await OrderJob.dispatch(log=log, name="p50-later").priority(50)
    await OrderJob.dispatch_many([{"log": log, "name": "many-0"}, {"log": log, "name": "many-1"}])
    await run_all(store)
    assert order(log) == ["p50", "p50-later", "p0-0", "p0-1", "p0-2", "p0-3", "p0-4", "many-0", "many-1", "p-5"], \
        store.worker_logs()


async def test_a_delayed_job_coming_due_takes_its_priority_place(store, tmp_path):
    log = str(tmp_path / "events")
    for n in range(3):
        await OrderJob.dispatch(log=log, name=f"p0-{n}")
    late = await OrderJob.dispatch(log=log, name="p50-delayed").priority(50).delay(1)
    deadline = asyncio.get_running_loop().time() + 10
    while (await late.status()).state != "pending":          # due on the store's clock
        assert asyncio.get_running_loop().time() < deadline, "the delayed job never came due"
        await asyncio.sleep(0.05)
    await run_all(store)
    assert order(log) == ["p50-delayed", "p0-0", "p0-1", "p0-2"]


async def test_a_retried_job_keeps_its_priority(store, tmp_path):
    log = str(tmp_path / "events")
    for n in range(2):
        await OrderJob.dispatch(log=log, name=f"p0-{n}")
    await FlakyOrderJob.dispatch(log=log, name="flaky").priority(10)
    await run_all(store)
    assert order(log) == ["flaky", "flaky", "p0-0", "p0-1"]


async def test_the_order_of_queues_beats_priority(store, tmp_path):
    log = str(tmp_path / "events")
    await OrderJob.dispatch(log=log, name="b-100").on_queue("b").priority(100)
    await OrderJob.dispatch(log=log, name="a-0").on_queue("a")
    await OrderJob.dispatch(log=log, name="a-minus").on_queue("a").priority(-100)
    await run_all(store, "--queue", "a,b")
    assert order(log) == ["a-0", "a-minus", "b-100"]


DOWNGRADE = {   # the release before SPEC 11: no priority (nor its siblings), the old reserve index
    "sqlite": ["DROP INDEX jobs_reserve_priority_index", "ALTER TABLE jobs DROP COLUMN priority_rank",
               "ALTER TABLE jobs DROP COLUMN last_error", "ALTER TABLE jobs DROP COLUMN progress",
               "ALTER TABLE jobs DROP COLUMN cancelled", "DROP TABLE job_results",
               "CREATE INDEX jobs_reserve_index ON jobs (queue, state, available_at)"],
    "mysql": ["CREATE INDEX jobs_reserve_index ON jobs (queue, state, available_at)",
              "DROP INDEX jobs_reserve_priority_index ON jobs", "ALTER TABLE jobs DROP COLUMN priority_rank",
              "ALTER TABLE jobs DROP COLUMN last_error", "ALTER TABLE jobs DROP COLUMN progress",
              "ALTER TABLE jobs DROP COLUMN cancelled", "DROP TABLE job_results"],
}


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
async def test_migrate_brings_a_database_without_priority_up_to_date(kind, request, monkeypatch, tmp_path):
    if kind == "mysql":
        request.getfixturevalue("mysql_env")
    configure(monkeypatch, "database")
    async with create_app() as app:
        db = (await app.queue.connection()).db
        for statement in DOWNGRADE[kind]:
            await db.execute(statement)
        old = await OrderJob.dispatch(log=str(tmp_path / "events"), name="old")      # still pushes
    from tests.conftest import run_cli

    run_cli("migrate", check=True)
    async with create_app() as app:
        db = (await app.queue.connection()).db
        columns = {str(c) for (c,) in await db.fetchall(db.dialect.column_names, ("jobs",))}
        indexes = {str(i) for (i,) in await db.fetchall(db.dialect.index_names, ("jobs",))}
        assert {"priority_rank", "last_error", "progress", "cancelled"} <= columns
        assert "jobs_reserve_priority_index" in indexes and "jobs_reserve_index" not in indexes
        assert (await old.status()).state == "pending"
        ref = await OrderJob.dispatch(log=str(tmp_path / "events"), name="new").priority(5).keep_result(60)
        taken = await (await app.queue.connection()).reserve_many(["default"], 2)
        assert [peek_uuid(job.payload) for job in taken] == [ref, old]
        assert (await ref.status()).state == "reserved"


async def test_migrate_on_postgresql_gives_the_reserve_index_the_id_it_orders_by(pgsql_env, monkeypatch):
    # PostgreSQL's index entries do not end with the id: the index of the release before has none, and
    # every reserve sorted the queue's whole READY range. migrate replaces it.
    configure(monkeypatch, "database")
    async with create_app() as app:
        conn = await app.queue.connection()
        db = conn.db
        await db.execute("DROP INDEX jobs_reserve_order_index")
        await db.execute("CREATE INDEX jobs_reserve_priority_index ON jobs (queue, state, available_at, priority_rank)")
        await conn.migrate()
        indexes = {str(i) for (i,) in await db.fetchall(db.dialect.index_names, ("jobs",))}
        assert "jobs_reserve_order_index" in indexes and "jobs_reserve_priority_index" not in indexes
        await conn.push_many("default", [payload(n) for n in range(3)])
        plan = "\n".join(row[0] for row in await db.fetchall(
            "EXPLAIN " + conn._take.replace("{marks}", ""), (90, "c", "default", 90, 2, 900)))
        assert "jobs_reserve_order_index" in plan and "Sort" not in plan
