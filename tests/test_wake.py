"""Wake-up (SPEC 17): an idle worker on a database starts a newly dispatched job long before its
--sleep, through the database's own mechanism (core/wake.py, core/pgsql.py); a lost wake-up costs
at most --sleep. Workers here sleep 30 s between polls, so a job that runs within a few seconds was
woken, never polled."""
from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.wake import ANY, BURST, RATE, Announcer, DataVersionWaker, Pace, SocketBus, Wakeups
from tests.conftest import store_env
from tests.contract.conftest import configure, open_backend
from tests.jobs.sample_jobs import RecordingJob
from tests.servers import PGSQL, PGSQL_USER, pgsql_query
from tests.worker_support import events, stop, until

SLEEP = "30"        # the workers' --sleep: polling would start a job this late
WOKEN = 10.0        # seconds within which a woken worker has started it, with room for a slow machine


@pytest.fixture(params=["sqlite", "mysql", "pgsql"])
async def db_store(request, monkeypatch, tmp_path):
    store_env(request, request.param)
    configure(monkeypatch, "database")
    async for backend in open_backend(request.param, tmp_path):
        yield backend


async def idle_worker(store, log: str, *args: str):
    """A worker that ran one job and went back to waiting (a second of grace so it is in its wait,
    not in the look that follows the job: a job found by that look proves nothing, but passes)."""
    worker = store.start_worker("--sleep", SLEEP, *args)
    await RecordingJob.dispatch(log=log, value="first")
    await until(lambda: len(events(log, "handle")) == 1, 20, "the first job", store)
    await asyncio.sleep(1)
    return worker


async def test_an_idle_worker_starts_a_new_job_long_before_its_sleep(db_store, tmp_path):
    log = str(tmp_path / "events")
    worker = await idle_worker(db_store, log)
    try:
        for n in range(3):
            await RecordingJob.dispatch(log=log, value=n)
            await until(lambda n=n: len(events(log, "handle")) == n + 2, WOKEN, f"job {n} to be woken for", db_store)
    finally:
        await stop(db_store, worker)


async def test_with_wake_up_off_an_idle_worker_waits_for_its_sleep(db_store, tmp_path, monkeypatch):
    """The control: the same worker with DB_WAKE=off does not start the job until it polls again."""
    monkeypatch.setenv("DB_WAKE", "off")
    log = str(tmp_path / "events")
    worker = await idle_worker(db_store, log)
    try:
        await RecordingJob.dispatch(log=log, value="late")
        await asyncio.sleep(3)
        assert len(events(log, "handle")) == 1, "the job started without a wake-up and long before --sleep"
    finally:
        await stop(db_store, worker)


@pytest.fixture
async def pgsql_store(request, monkeypatch, tmp_path):
    store_env(request, "pgsql")
    configure(monkeypatch, "database")
    async for backend in open_backend("pgsql", tmp_path):
        yield backend


LISTENERS = "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'"


def listeners(database: str) -> list[int]:
    return [pid for (pid,) in pgsql_query(LISTENERS, database)]


async def test_a_dropped_listener_reconnects_and_the_worker_reserves_what_came_in_the_gap(pgsql_store, tmp_path):
    log = str(tmp_path / "events")
    database = os.environ["DB_DATABASE"]
    worker = await idle_worker(pgsql_store, log)
    try:
        (pid,) = listeners(database)
        pgsql_query("SELECT pg_terminate_backend($1)", pid)
        await RecordingJob.dispatch(log=log, value="in the gap")     # its notification reaches no one
        await until(lambda: len(events(log, "handle")) == 2, WOKEN, "the job dispatched in the gap", pgsql_store)
        await until(lambda: "Wake-up listener reconnected" in pgsql_store.worker_logs(), WOKEN, "the reconnect line",
                    pgsql_store)
        await RecordingJob.dispatch(log=log, value="after")           # and the new listener is woken
        await until(lambda: len(events(log, "handle")) == 3, WOKEN, "the job after the reconnect", pgsql_store)
        assert listeners(database) not in ([], [pid])
    finally:
        await stop(pgsql_store, worker)
    output = pgsql_store.worker_logs()
    assert output.count("Wake-up listener lost") == 1 and output.count("Wake-up listener reconnected") == 1, output
    assert "Traceback" not in output, output


async def test_db_listen_url_is_where_the_listener_connects(pgsql_store, tmp_path, monkeypatch):
    """DB_LISTEN_URL, not DB_HOST: pointed at a port where nothing listens, the listener says so
    once and the worker still finds jobs by polling; pointed at the server, it is woken."""
    log = str(tmp_path / "events")
    database = os.environ["DB_DATABASE"]
    monkeypatch.setenv("DB_LISTEN_URL", f"postgresql://{PGSQL_USER}:no-such-secret@{PGSQL[0]}:1/{database}")
    worker = pgsql_store.start_worker("--sleep", "1")
    try:
        await RecordingJob.dispatch(log=log, value="polled")
        await until(lambda: len(events(log, "handle")) == 1, 20, "the job, found by polling", pgsql_store)
        await until(lambda: "Wake-up listener lost PostgreSQL at DB_LISTEN_URL" in pgsql_store.worker_logs(), 20,
                    "the listener's line", pgsql_store)
    finally:
        await stop(pgsql_store, worker)
    assert "no-such-secret" not in pgsql_store.worker_logs()
    monkeypatch.setenv("DB_LISTEN_URL", f"postgresql://{PGSQL_USER}@{PGSQL[0]}:{PGSQL[1]}/{database}")
    worker = await idle_worker(pgsql_store, log)
    try:
        await RecordingJob.dispatch(log=log, value="woken")
        await until(lambda: len(events(log, "handle")) == 3, WOKEN, "the woken job", pgsql_store)
    finally:
        await stop(pgsql_store, worker)


async def test_the_notification_is_sent_after_the_push_committed(pgsql_store):
    """NOTIFY inside the push's transaction would serialize commits: it comes after, so whoever
    hears it already sees the job."""
    import asyncpg

    database = os.environ["DB_DATABASE"]
    conn = await asyncpg.connect(host=PGSQL[0], port=PGSQL[1], user=PGSQL_USER, database=database)
    seen: list[int] = []
    heard = asyncio.Event()

    async def look() -> None:
        seen.append(await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE queue = 'default'"))
        heard.set()

    try:
        await conn.add_listener("queue_jobs", lambda *_: asyncio.ensure_future(look()))
        await RecordingJob.dispatch(log="-")
        await asyncio.wait_for(heard.wait(), 10)
    finally:
        await conn.close()
    assert seen == [1]


DISPATCHERS = 16
DISPATCH_EACH = 40
ROOT = Path(__file__).resolve().parent.parent
DISPATCHER = """
import asyncio, sys, time
from bootstrap.app import create_app
from tests.jobs.sample_jobs import RecordingJob

async def main(log, each):
    async with create_app() as app:
        await app.queue.connection()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for n in range(each):
            await RecordingJob.dispatch(log=log, value=n)
        print(time.monotonic(), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_sixteen_dispatcher_processes_share_one_pace_and_still_wake_the_idle_worker(pgsql_store, tmp_path):
    """16 processes dispatching at once send about RATE notifications a second between them, not
    one per dispatch (each process alone, dispatching under RATE a second, would notify every
    push); the worker, idle and woken for the first, busy for the rest, still starts every job
    long before its --sleep (30 s), and is woken again for the jobs that come once it is idle."""
    import asyncpg

    log = str(tmp_path / "events")
    database = os.environ["DB_DATABASE"]
    worker = await idle_worker(pgsql_store, log)
    heard: list[str] = []
    conn = await asyncpg.connect(host=PGSQL[0], port=PGSQL[1], user=PGSQL_USER, database=database)
    await conn.add_listener("queue_jobs", lambda _c, _pid, _channel, queue: heard.append(queue))
    procs = [subprocess.Popen([sys.executable, "-c", DISPATCHER, log, str(DISPATCH_EACH)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(DISPATCHERS)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        ends = [float((await asyncio.to_thread(proc.communicate, timeout=120))[0].split()[-1]) for proc in procs]
        assert [proc.returncode for proc in procs] == [0] * DISPATCHERS
        jobs = 1 + DISPATCHERS * DISPATCH_EACH
        await until(lambda: len(events(log, "handle")) == jobs, WOKEN, "every dispatched job", pgsql_store)
        elapsed = max(ends) - started
        await asyncio.sleep(0.5)                      # the trailing notifications, heard
        assert 1 <= len(heard) <= BURST + RATE * (elapsed + 0.5) + DISPATCHERS, (len(heard), elapsed)
        assert len(heard) < DISPATCHERS * DISPATCH_EACH / 2, (len(heard), elapsed)
        await asyncio.sleep(1)                        # idle again: the next dispatch wakes it at once
        await RecordingJob.dispatch(log=log, value="after")
        await until(lambda: len(events(log, "handle")) == jobs + 1, WOKEN, "the job after the flood", pgsql_store)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        await conn.close()
        await stop(pgsql_store, worker)


async def test_a_job_whose_wake_up_is_lost_is_still_found_by_the_next_poll(pgsql_store, tmp_path):
    """The host's pace says a wake-up was just sent (by a process that then died before sending it,
    say): the dispatch sends none, and the idle worker finds the job at its next --sleep poll."""
    log = str(tmp_path / "events")
    worker = pgsql_store.start_worker("--sleep", "1")
    try:
        await RecordingJob.dispatch(log=log, value="first")
        await until(lambda: len(events(log, "handle")) == 1, 20, "the first job", pgsql_store)
        c = pgsql_store.app.config.database
        pace = Pace(f"pgsql://{c.host}:{c.port}/{c.database}")
        ahead = time.monotonic() + 0.9                 # within what a record may hold (now + 1 s)
        pace.update("default", BURST, lambda bucket: ((-BURST, ahead, ahead), None))
        pace.close()
        await RecordingJob.dispatch(log=log, value="unannounced")
        await until(lambda: len(events(log, "handle")) == 2, 5, "the job, at the next poll", pgsql_store)
    finally:
        await stop(pgsql_store, worker)


# -- the pieces, in one process --------------------------------------------------------------------

async def test_the_announcer_sends_a_burst_at_once_then_folds_the_rest_into_paced_wake_ups():
    sent: list[tuple[str, float]] = []

    async def send(queue: str) -> None:
        sent.append((queue, time.monotonic()))

    announcer = Announcer(send, rate=20, burst=2)
    started = time.monotonic()
    await announcer.announce("a")
    await announcer.announce("a")
    assert [q for q, _ in sent] == ["a", "a"]             # the burst: before announce returned
    for _ in range(200):
        await announcer.announce("a")
    last = time.monotonic()
    elapsed = last - started
    await asyncio.sleep(0.2)
    assert sent[-1][1] >= last, "the last push of the burst was followed by no wake-up"
    assert len(sent) <= 2 + elapsed * 20 + 1, (len(sent), elapsed)
    await announcer.announce("b")                         # another queue has its own window
    assert sent[-1][0] == "b"


async def test_a_wake_up_held_back_is_sent_when_the_announcer_closes():
    sent: list[str] = []

    async def send(queue: str) -> None:
        sent.append(queue)

    announcer = Announcer(send, rate=1 / 60, burst=1)
    await announcer.announce("a")
    await announcer.announce("a")
    await announcer.flush()
    assert sent == ["a", "a"]


async def test_a_waker_wakes_only_for_its_queues_or_for_all():
    wakeups = Wakeups()
    since = wakeups.mark()
    waiting = asyncio.ensure_future(wakeups.wait(["a"], since, 10))
    await asyncio.sleep(0)
    wakeups.wake("b")
    await asyncio.sleep(0.05)
    assert not waiting.done()
    wakeups.wake("a")
    assert await asyncio.wait_for(waiting, 1) is True
    since = wakeups.mark()
    wakeups.wake(ANY)
    assert await wakeups.wait(["c"], since, 1) is True
    stopping = asyncio.Event()
    stopping.set()
    assert await wakeups.wait(["c"], wakeups.mark(), 10, stopping) is False


async def test_sqlite_change_counter_wakes_on_another_connections_commit(tmp_path):
    path = tmp_path / "db.sqlite"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (x)")
    waker = DataVersionWaker(path)
    try:
        since = waker.mark()
        assert await waker.wait(["default"], since, 0.1) is False
        waiting = asyncio.ensure_future(waker.wait(["default"], since, 10))
        await asyncio.sleep(0.02)
        writer.execute("INSERT INTO t VALUES (1)")
        assert await asyncio.wait_for(waiting, 2) is True
    finally:
        waker.close()
        writer.close()


async def test_the_socket_bus_reaches_each_worker_and_forgets_one_that_is_gone(tmp_path):
    bus = SocketBus(f"test://{tmp_path}")
    wakeups = Wakeups()
    bus.listen(wakeups)
    stale = bus.directory / "999999999-dead.sock"
    gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    gone.bind(str(stale))
    gone.close()                                          # bound, then its process died
    dispatcher = SocketBus(f"test://{tmp_path}")
    try:
        since = wakeups.mark()
        await dispatcher.send("emails")
        assert await wakeups.wait(["emails"], since, 5) is True
        assert not stale.exists()
    finally:
        dispatcher.close()
        bus.close()
    assert not bus.directory.exists(), "the last worker out leaves no directory behind"


async def test_announcers_sharing_a_pace_send_one_wake_up_for_pushes_a_sent_one_covers(tmp_path):
    """Two processes' announcers on one host's pace: one bucket between them; a push held back by
    one is covered by the other's later wake-up, and its own trailing one is not sent."""
    sent: list[tuple[str, str, float]] = []

    def sender(who: str):
        async def send(queue: str) -> None:
            sent.append((who, queue, time.monotonic()))
        return send

    key = f"test://{tmp_path}"
    a = Announcer(sender("a"), rate=10, burst=2, shared=Pace(key))
    b = Announcer(sender("b"), rate=10, burst=2, shared=Pace(key))
    try:
        await a.announce("q")
        await b.announce("q")
        assert [who for who, _, _ in sent] == ["a", "b"]          # the burst, between both
        await a.announce("q")                                     # the bucket is empty: held back
        await b.announce("q")
        pushed = time.monotonic()
        assert len(sent) == 2
        await asyncio.sleep(0.3)                                  # both trailing ones came due
        assert len(sent) == 3 and sent[2][2] >= pushed, sent      # one wake-up, after both pushes
        await a.announce("other")                                 # another queue: its own bucket
        assert sent[-1][:2] == ("a", "other")
    finally:
        for announcer in (a, b):
            await announcer.flush()
            announcer.close()


async def test_a_shared_pace_that_cannot_be_had_leaves_each_process_pacing_alone(tmp_path):
    sent: list[str] = []

    async def send(queue: str) -> None:
        sent.append(queue)

    pace = Pace(f"test://{tmp_path}")
    pace.path = tmp_path / "missing" / "x.pace"                 # cannot be opened: no such directory
    announcer = Announcer(send, rate=1 / 60, burst=2, shared=pace)
    await announcer.announce("q")
    await announcer.announce("q")
    await announcer.announce("q")
    assert sent == ["q", "q"]
    await announcer.flush()
    announcer.close()
    assert sent == ["q", "q", "q"]


async def test_a_wake_up_that_takes_a_connection_rides_on_the_next_push(monkeypatch):
    """PostgreSQL's NOTIFY takes a pooled connection: a trailing wake-up that comes due is sent
    right after the process's next push (on the connection it used), not beside it; with no push
    it goes on its own after GRACE (here a minute: it waits), and closing sends it."""
    import core.wake

    monkeypatch.setattr(core.wake, "GRACE", 60.0)
    sent: list[str] = []

    async def send(queue: str) -> None:
        sent.append(queue)

    announcer = Announcer(send, rate=20, burst=1, carried=True)
    await announcer.announce("q")
    await announcer.announce("q")                 # held back: due in 50 ms
    await asyncio.sleep(0.2)
    assert sent == ["q"], "a due wake-up went beside the pushes instead of after the next one"
    await announcer.announce("q")
    assert sent == ["q", "q"]                     # carried: sent before this push's announce returned
    await announcer.announce("q")                 # a token came back meanwhile: sent at once
    await announcer.announce("q")                 # held back again
    await asyncio.sleep(0.2)
    assert sent == ["q", "q", "q"]
    await announcer.flush()
    assert sent == ["q", "q", "q", "q"]
