"""Dispatching while the queue's store is away: a bounded wait (QUEUE_DISPATCH_TIMEOUT), then a clear
QueueConnectionError; never a success for a job that was not stored, never a job stored twice."""
from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import pytest

from bootstrap.app import create_app
from core.dispatch import dispatch, dispatch_many
from core.errors import ConnectionFailed, QueueConnectionError
from core import events
from core.events import JobQueued, listen
from core.payload import Payload
from tests.faults.conftest import eventually
from tests.faults.proxy import FaultProxy
from tests.jobs.outage_jobs import OutageJob
from tests.servers import MYSQL, REDIS, pgsql_query

pytestmark = pytest.mark.slow


@pytest.fixture(params=["redis", "mysql", "pgsql"])
def store(request, monkeypatch) -> tuple[FaultProxy, str]:
    monkeypatch.setenv("DB_TIMEOUT", "2")
    proxy = request.getfixturevalue(f"{request.param}_proxy")
    name = {"redis": "Redis", "mysql": "MySQL", "pgsql": "PostgreSQL"}[request.param]
    return proxy, f"{name} at 127.0.0.1:{proxy.port}"


def stored_on_the_server() -> int:
    """Jobs on the outage queue, asked of the real server (not through the proxy)."""
    if os.environ["QUEUE_CONNECTION"] == "redis":
        import redis

        with redis.Redis(*REDIS, db=int(os.environ["REDIS_DB"])) as client:
            return sum(client.zcard(f"queues:{{outage}}{part}") for part in ("", ":delayed", ":reserved"))
    if os.environ["DB_CONNECTION"] == "pgsql":
        return pgsql_query("SELECT COUNT(*) FROM jobs WHERE queue = 'outage'", database=os.environ["DB_DATABASE"])[0][0]
    import pymysql

    conn = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", database=os.environ["DB_DATABASE"])
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM jobs WHERE queue = 'outage'")
            return cursor.fetchone()[0]
    finally:
        conn.close()


async def stored(app) -> int:
    """Jobs on the outage queue, in whatever state."""
    size = (await (await app.queue.connection()).sizes(["outage"]))["outage"]
    return size.pending + size.delayed + size.reserved


async def test_a_dispatch_during_a_cut_raises_a_clear_error_within_its_timeout(store, monkeypatch):
    proxy, label = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "1.5")
    async with create_app() as app:
        await OutageJob.dispatch(path="-")                 # the connection is open and in use
        proxy.cut()
        job = OutageJob()
        started = time.monotonic()
        with pytest.raises(QueueConnectionError) as caught:
            await OutageJob.dispatch(path="-")
        waited = time.monotonic() - started
        with pytest.raises(QueueConnectionError):
            await dispatch_many([job, OutageJob(), OutageJob()])
        proxy.restore()
        assert await stored(app) == 1                      # only the one dispatched before the cut
    assert 1.4 < waited < 5, waited
    message = str(caught.value)
    assert isinstance(caught.value, ConnectionFailed) and "\n" not in message
    assert message.startswith("Cannot dispatch OutageJob [") and f"{label} is unreachable (" in message, message
    assert message.endswith("gave up after 1.5s (QUEUE_DISPATCH_TIMEOUT)"), message


async def test_a_store_back_within_the_timeout_gets_the_job_once(store, monkeypatch):
    proxy, _ = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "15")
    async with create_app() as app:
        await app.queue.connection()
        proxy.cut()
        pending = asyncio.ensure_future(OutageJob.dispatch(path="-"))
        await asyncio.sleep(1.0)
        assert not pending.done()                           # waiting, not failed, not "pushed"
        proxy.restore()
        job_id = await asyncio.wait_for(pending, 15)
        assert await stored(app) == 1
        reserved = await (await app.queue.connection()).reserve(["outage"])
        assert job_id in reserved.payload


async def test_a_partition_does_not_hold_a_dispatch_past_its_timeout(store, monkeypatch):
    proxy, label = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "1")
    async with create_app() as app:
        await app.queue.connection()
        proxy.blackhole()                                   # the command hangs: no error comes by itself
        started = time.monotonic()
        with pytest.raises(QueueConnectionError) as caught:
            await OutageJob.dispatch(path="-")
        waited = time.monotonic() - started
        proxy.restore()
        assert await stored(app) == 0
    assert waited < 3, waited                               # not the driver's own 10s or more
    assert f"{label} is unreachable (" in str(caught.value)


async def test_a_hanging_dispatch_cancelled_by_its_caller_is_cancelled_not_timed_out(store, monkeypatch):
    """An MQTT handler or a test cancelling its own dispatch gets CancelledError, as with any
    await; the dispatch's deadline, near but not yet reached, does not turn it into an error."""
    proxy, _ = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "0.6")
    async with create_app() as app:
        await app.queue.connection()
        proxy.blackhole()
        dispatch = asyncio.ensure_future(OutageJob.dispatch(path="-"))
        await asyncio.sleep(0.5)
        dispatch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dispatch
        await asyncio.sleep(0.3)                            # past the deadline: nothing fires late
        assert asyncio.current_task().cancelling() == 0
        proxy.restore()
        assert await OutageJob.dispatch(path="-")           # and the next dispatch goes through
        assert await stored(app) == 1


async def test_an_answer_lost_after_the_store_took_the_job_is_not_a_second_job(store, monkeypatch):
    """The push reaches the server and is stored; its answer never comes back; the connection then
    drops. The retry must find the job there rather than store it again."""
    proxy, _ = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "20")
    async with create_app() as app:
        await app.queue.connection()
        assert await stored(app) == 0
        # A first push prepares the statement on the connection (asyncpg prepares in a round trip
        # of its own, whose answer would be lost too: the push would never be sent).
        await OutageJob.dispatch(path="-")
        proxy.lose_replies()
        pending = asyncio.ensure_future(OutageJob.dispatch(path="-"))
        await eventually(lambda: stored_on_the_server() == 2, 10, "the server to store the job")
        assert not pending.done()                           # the dispatcher is still waiting for the answer
        proxy.cut()
        proxy.restore()
        await asyncio.wait_for(pending, 20)
        assert await stored(app) == 2


async def test_no_retry_with_a_zero_timeout_and_a_store_down_from_the_start(store, monkeypatch):
    proxy, label = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "0")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret-pass")
    monkeypatch.setenv("DB_PASSWORD", "s3cret-pass")
    proxy.cut()                                             # before the app ever connects
    async with create_app():
        started = time.monotonic()
        with pytest.raises(QueueConnectionError) as caught:
            await OutageJob.dispatch(path="-")
        assert time.monotonic() - started < 2.5              # the client's own quick retries, not 5s of ours
    message = str(caught.value)
    assert f"Cannot connect to {label}: Connection refused; not retried (QUEUE_DISPATCH_TIMEOUT)" in message, message
    assert "s3cret-pass" not in message


# -- group commit: concurrent dispatches pushed together ------------------------------------------

async def stored_ids(app) -> Counter[str]:
    """How many times each job id is stored on the outage queue (reserving every job)."""
    conn = await app.queue.connection()
    seen: Counter[str] = Counter()
    while jobs := await conn.reserve_many(["outage"], 200):
        seen.update(Payload.decode(job.payload, app.config.app.key).uuid for job in jobs)
    return seen


async def test_a_group_whose_answer_is_lost_is_stored_once_when_the_connection_drops(store, monkeypatch):
    """Dispatches waiting behind the pushes on the wire go as one push the moment the first of those
    is answered; the store takes the group, its answer never comes back, the connection drops: the
    group is retried as a whole and each job is stored once, each caller getting its own id."""
    proxy, _ = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "30")
    monkeypatch.setattr(events, "_listeners", {})        # this test's listener only, gone after it
    armed = []

    @listen(JobQueued)
    def lose_what_follows(event: JobQueued) -> None:
        # Heard right after the first push is answered, before the group it let go is sent.
        if armed and not armed[0]:
            armed[0] = True
            proxy.lose_replies()

    async with create_app() as app:
        conn = await app.queue.connection()
        warm = await asyncio.gather(*(OutageJob.dispatch(path="-") for _ in range(20)))  # statements prepared
        armed.append(False)
        lone = [asyncio.ensure_future(OutageJob.dispatch(path="-")) for _ in range(conn.pushes_in_flight)]
        grouped = [asyncio.ensure_future(OutageJob.dispatch(path="-")) for _ in range(50)]
        if os.environ["QUEUE_CONNECTION"] == "database" and os.environ["DB_CONNECTION"] == "pgsql":
            # PostgreSQL prepares the group's statement in a round trip of its own, whose answer is
            # lost too: the insert itself goes with the retry.
            await asyncio.sleep(1.0)
        else:
            await eventually(lambda: stored_on_the_server() == len(warm) + len(lone) + 50, 10,
                             "the group to be stored")
        assert armed == [True] and not any(task.done() for task in grouped)   # waiting for their answer
        proxy.cut()
        proxy.restore()
        ids = await asyncio.wait_for(asyncio.gather(*lone, *grouped), 30)
        seen = await stored_ids(app)
    assert len(set(ids)) == len(lone) + 50
    assert seen == Counter([*warm, *ids])                   # each stored once, none missing


async def test_each_dispatch_of_a_group_that_fails_gets_its_own_error(store, monkeypatch):
    proxy, label = store
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "1")
    async with create_app() as app:
        await app.queue.connection()
        proxy.blackhole()
        jobs = [OutageJob() for _ in range(12)]
        outcomes = await asyncio.gather(*(dispatch(job) for job in jobs), return_exceptions=True)
        proxy.restore()
        assert await stored(app) == 0
    for job, outcome in zip(jobs, outcomes):
        assert isinstance(outcome, QueueConnectionError), outcome
        message = str(outcome)
        assert message.startswith(f"Cannot dispatch OutageJob [{job.job_id}]: {label} is unreachable ("), message
        assert message.endswith("gave up after 1s (QUEUE_DISPATCH_TIMEOUT)"), message


# -- the connection's first use ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mysql", "pgsql"])
async def test_a_connection_dropped_while_the_first_dispatch_makes_the_tables_is_retried(kind, request, monkeypatch):
    """The first dispatch opens the queue connection, which makes the tables (migrate). A connection
    dropped then is the store being away like any other: the dispatch waits it out and stores its job
    once. It raised the driver's own error instead ('Lost connection to MySQL server during query'),
    and the chaos run on MySQL saw two dispatches lost so."""
    from core.queue.database import DatabaseQueue

    monkeypatch.setenv("DB_TIMEOUT", "2")
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "15")
    proxy = request.getfixturevalue(f"{kind}_proxy")
    real = DatabaseQueue.migrate
    opened = 0

    async def migrate_through_a_drop(self) -> None:
        nonlocal opened
        opened += 1
        if opened == 1:             # the pool is connected: every link reset, new ones refused a moment
            proxy.cut()
            asyncio.get_running_loop().call_later(0.5, proxy.restore)
        await real(self)

    monkeypatch.setattr(DatabaseQueue, "migrate", migrate_through_a_drop)
    async with create_app() as app:
        job_id = await OutageJob.dispatch(path="-")
        assert opened >= 2                                  # opened again once the store was back
        assert await stored_ids(app) == Counter({job_id: 1})
