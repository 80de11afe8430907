"""The worker against a store that goes away while it settles a job (issue 11, findings 7, 8, 9, 19).

Through tests/faults/proxy.py, as tests/faults/test_worker_outages.py does: the real servers stay up.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

import core.worker.settle
from bootstrap.app import create_app
from core.dispatch import _encode
from core.worker import Worker, WorkerOptions
from tests.conftest import ROOT, store_env
from tests.faults.conftest import eventually
from tests.jobs.contract_jobs import read_runs
from tests.jobs.outage_jobs import OutageJob
from tests.jobs.sample_jobs import read_events
from tests.jobs.worker_audit_jobs import FailsJob, FailsOnceJob, SucceedsJob

pytestmark = pytest.mark.slow


async def test_an_acknowledgement_that_gave_up_is_not_logged_as_done(redis_proxy, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    monkeypatch.setattr(core.worker.settle, "SETTLE_TRIES", 2)
    log = str(tmp_path / "events")
    with caplog.at_level(logging.INFO):
        async with create_app() as app:
            job_id = await SucceedsJob.dispatch(log=log, seconds=0.5)
            worker = Worker(app, WorkerOptions(sleep=0.05))
            task = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: read_events(log), 10, "the job to start")
                redis_proxy.cut()             # handle() returns into an outage longer than the visibility timeout
                gave_up = "the acknowledgement could not be stored"
                await eventually(lambda: gave_up in "\n".join(caplog.messages), 15, "the worker to give up")
            finally:
                worker.stop("test over")
                redis_proxy.restore()
                await asyncio.wait_for(task, 30)
    lines = [m for m in caplog.messages if job_id in m]
    assert [m for m in lines if m.startswith("DONE")] == [], lines
    assert f"SucceedsJob [{job_id}]: handle() returned, but the acknowledgement could not be stored; it runs again " \
           f"after the visibility timeout" in lines


# -- the failing mark: failed() once, the job's own exception, no row for a job that then succeeded -----------

STORES = ["sqlite", "mysql", "pgsql", "redis"]


@pytest.fixture(params=STORES)
def failing_store(request, monkeypatch) -> str:
    """The queue on this store with a 2 s visibility timeout, so a stalled worker's reservation lapses soon."""
    store_env(request, request.param)
    monkeypatch.setenv("QUEUE_CONNECTION", "redis" if request.param == "redis" else "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    return request.param


async def test_a_failure_half_done_when_the_reservation_lapsed_is_finished_not_run_again(failing_store, tmp_path):
    """Finding 8. Worker A fails the job, then stalls in failed() (the process is stopped past the visibility
    timeout, its heartbeat with it: blocking the loop alone no longer stops renewals): its reservation lapses.
    Worker B, which would give the job more tries, takes it: it finishes
    the failure with A's exception and never runs handle() again; A, back, finds its reservation gone and
    records nothing. Before: B ran the job, it succeeded, and A then wrote a failed_jobs row for it."""
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await FailsOnceJob.dispatch(log=log, failed_block=5)
        first_log = tmp_path / "first.log"
        with open(first_log, "w") as out:
            first = subprocess.Popen([sys.executable, "main.py", "queue:work", "--stop-when-empty", "--sleep", "0.05"],
                                     cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)
        try:
            await eventually(lambda: [e for e in read_events(log) if e["event"] == "failed"], 20, "A's failed()")
            os.kill(first.pid, signal.SIGSTOP)
            # A is stalled: once its reservation lapses (a visibility timeout after its last renewal,
            # on the store's clock, whole seconds on the databases), B takes the job.
            deadline = time.monotonic() + 20
            while True:
                second = Worker(app, WorkerOptions(tries=3, stop_when_empty=True, sleep=0.05))
                await asyncio.wait_for(second.run(), 30)
                if second.processed or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.25)
            os.kill(first.pid, signal.SIGCONT)
            assert await asyncio.to_thread(first.wait, 30) == 0
        finally:
            if first.poll() is None:
                os.kill(first.pid, signal.SIGCONT)
                first.kill()
        rows = await (await app.queue.failed_store()).all()
        sizes = (await (await app.queue.connection()).sizes(["default"]))["default"]
    events = read_events(log)
    first_out = first_log.read_text()
    assert [e["attempts"] for e in events if e["event"] == "handle"] == [1], first_out   # never run again
    assert [(r.uuid, r.summary) for r in rows] == [(job_id, "ValueError: fails on attempt 1")], first_out
    assert sizes.as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert "[reservation lost; its failure is left to the worker that holds it]" in first_out, first_out
    # B called failed() as A's never returned in time, with A's exception (a RecordedFailure of its text).
    assert [e["exception"] for e in events if e["event"] == "failed"] == ["fails on attempt 1",
                                                                         "ValueError: fails on attempt 1"]


async def test_a_failed_job_store_away_while_failing_calls_failed_once_and_keeps_the_jobs_exception(
        mysql_proxy, redis_env, monkeypatch, tmp_path, caplog):
    """Finding 7. The queue is Redis; failed_jobs is in MySQL, cut off while the worker fails the job. The
    worker gives up, the job comes back after the visibility timeout, and is recorded once MySQL is back:
    failed() ran once, and the row holds the job's own exception, not MaxAttemptsExceededError."""
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    monkeypatch.setenv("DB_TIMEOUT", "2")
    monkeypatch.setattr(core.worker.settle, "SETTLE_TRIES", 2)
    log = str(tmp_path / "events")
    with caplog.at_level(logging.INFO):
        async with create_app() as app:
            failed_store = await app.queue.failed_store()
            assert await failed_store.all() == []
            job_id = await FailsJob.dispatch(log=log)
            mysql_proxy.cut()
            worker = Worker(app, WorkerOptions(sleep=0.05))
            task = asyncio.create_task(worker.run())
            try:
                gave_up = "failed, but the failure could not be recorded"
                await eventually(lambda: "\n".join(caplog.messages).count(gave_up) >= 2, 30,
                                 "the worker to give up twice (the job came back in between)")
                mysql_proxy.restore()
                await eventually(lambda: any(m.startswith(f"FAIL    FailsJob [{job_id}]") for m in caplog.messages),
                                 30, "the failure to be recorded")
            finally:
                worker.stop("test over")
                mysql_proxy.restore()
                await asyncio.wait_for(task, 30)
            rows = await failed_store.all()
            sizes = (await (await app.queue.connection()).sizes(["default"]))["default"]
    events = read_events(log)
    assert [e["event"] for e in events] == ["handle", "failed", "failed-end"]
    assert [(r.uuid, r.summary) for r in rows] == [(job_id, "ValueError: fails on attempt 1")]
    assert sizes.as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}


# -- a reserve whose answer is lost (finding 9) -----------------------------------------------------------------

async def test_a_reserve_answer_lost_on_redis_does_not_cost_the_job_its_only_try(redis_proxy, redis_env, monkeypatch,
                                                                                 tmp_path, caplog):
    """The worker waits in a reserve; the server hands it the job, the answer is lost. The job runs at
    attempt 1 within seconds, not as 'a worker died' after the visibility timeout."""
    import redis

    from tests.servers import REDIS

    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "30")
    log = str(tmp_path / "events")
    with caplog.at_level(logging.INFO):
        async with create_app() as app:
            conn = await app.queue.connection()
            await conn.sizes(["default"])
            worker = Worker(app, WorkerOptions(sleep=1.0))
            task = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: any("Worker started" in m for m in caplog.messages), 10, "the worker")
                await asyncio.sleep(0.5)                        # waiting in its reserve
                redis_proxy.lose_replies()
                pusher = type(conn)(conn.config.__class__(host=REDIS[0], port=REDIS[1], db=redis_env), conn.failed)
                await pusher.open()                             # straight to the server, not through the proxy
                try:
                    _, raw = _encode(app, SucceedsJob.make(log=log, max_tries=1), None)
                    await pusher.push("default", raw)
                finally:
                    await pusher.close()
                with redis.Redis(*REDIS, db=redis_env) as server:
                    await eventually(lambda: server.zcard("queues:{default}:reserved") == 1, 15, "the reserve to run")
                redis_proxy.cut()
                redis_proxy.restore()
                await eventually(lambda: [e for e in read_events(log) if e["event"] == "end"], 15, "the job to run")
            finally:
                worker.stop("test over")
                redis_proxy.restore()
                await asyncio.wait_for(task, 30)
            rows = await (await app.queue.failed_store()).all()
    assert [(e["event"], e["attempts"]) for e in read_events(log)] == [("handle", 1), ("end", 1)]
    assert rows == []


def lose_the_first_reserve_answer(monkeypatch, conn, before=None) -> list:
    """conn.reserve_wait reserves as usual, but the answer of the first call that took a job is lost: the
    store reserved it (its attempt counted), then the connection resets. `before(job)` is awaited first.
    Returns the jobs whose answers were lost."""
    lost: list = []
    reserve_wait = conn.reserve_wait

    async def answer_lost_once(*args, **kwargs):
        job = await reserve_wait(*args, **kwargs)
        if job is not None and not lost:
            lost.append(job)
            if before is not None:
                await before(job)
            raise ConnectionResetError(104, "Connection reset by peer")
        return job

    monkeypatch.setattr(conn, "reserve_wait", answer_lost_once)
    return lost


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "pgsql"])
async def test_a_reserve_answer_lost_on_the_database_does_not_cost_the_job_its_only_try(kind, request, monkeypatch,
                                                                                        tmp_path, caplog):
    """The worker's reserve commits on the server, then its answer is lost on the way back (the connection
    resets: a database reserve is several round trips, so the proxy cannot drop just the last answer; the
    loss is staged where the answer reaches the worker). The worker recovers the call's claim once the
    store answers again: the job runs at attempt 1, not as 'a worker died' after the visibility timeout."""
    store_env(request, kind)
    monkeypatch.setenv("QUEUE_CONNECTION", "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "30")
    log = str(tmp_path / "events")
    with caplog.at_level(logging.INFO):
        async with create_app() as app:
            conn = await app.queue.connection()
            job_id = await SucceedsJob.dispatch(log=log, max_tries=1)
            lost = lose_the_first_reserve_answer(monkeypatch, conn)
            worker = Worker(app, WorkerOptions(sleep=0.05, stop_when_empty=True))
            await asyncio.wait_for(worker.run(), 20)
            rows = await (await app.queue.failed_store()).all()
            sizes = (await conn.sizes(["default"]))["default"]
    assert lost, "no reserve answer was lost"
    assert [(e["event"], e["attempts"]) for e in read_events(log)] == [("handle", 1), ("end", 1)]
    assert rows == [] and sizes.as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert any(m.endswith("its reservation's answer was lost; recovered and started") for m in caplog.messages)
    assert any(m.startswith(f"DONE    SucceedsJob [{job_id}]") for m in caplog.messages)


async def test_a_job_recovered_just_before_its_reservation_runs_out_is_renewed_before_it_starts(monkeypatch, tmp_path,
                                                                                                 caplog):
    """A reserve's answer is lost, and the worker recovers the call's claim a moment before the reservation
    runs out (a PostgreSQL soak: 0.1 s; the claim is asked for up to a visibility timeout). It renews the
    job as it starts it: another worker reserving just after that moment finds nothing, and the job runs
    once. Before, it waited for the heartbeat's next beat, and the other worker took and ran it again."""
    monkeypatch.setenv("QUEUE_CONNECTION", "database")
    # 8: the heartbeat beats every 2 s, so it seldom happens to renew the job in the moment left.
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "8")
    runs = str(tmp_path / "runs")
    with caplog.at_level(logging.INFO):
        async with create_app() as app:
            conn = await app.queue.connection()
            job_id = await OutageJob.dispatch(path=runs, seconds=2.0)
            runs_out: list[float] = []          # when the lost call's reservation would lapse (the store's clock)

            async def until_just_before_it_runs_out(job):
                [(until,)] = await conn.db.fetchall("SELECT available_at FROM jobs WHERE id = ?", [int(job.id)])
                runs_out.append(float(until))      # SQLite's clock is whole seconds: due once it reads `until`
                await asyncio.sleep(until - 0.6 - time.time())      # the worker backs off 0.5 s, then recovers

            lose_the_first_reserve_answer(monkeypatch, conn, until_just_before_it_runs_out)
            worker = Worker(app, WorkerOptions(queues=("outage",), sleep=0.05))
            task = asyncio.create_task(worker.run())
            taken = []
            try:
                await eventually(lambda: len(read_runs(runs)) >= 1, 15, "the recovered job to start")
                await asyncio.sleep(max(0.0, runs_out[0] + 0.05 - time.time()))
                while time.time() < runs_out[0] + 1.2:          # another worker, reserving right after
                    taken += await conn.reserve_many(["outage"], 1)
                    await asyncio.sleep(0.1)
                await eventually(lambda: not worker._running, 10, "the job to finish")
            finally:
                worker.stop("test over")
                await asyncio.wait_for(task, 20)
    assert taken == [], "a second worker took the job while the first ran it"
    assert read_runs(runs) == [(job_id, 1)]
    assert any(m.endswith("its reservation's answer was lost; recovered and started") for m in caplog.messages)


async def test_a_job_recovered_from_a_lost_reserve_answer_counts_toward_max_jobs(monkeypatch, tmp_path):
    """--max-jobs 1, and the answer of the reserve that took the first job is lost: the job is
    recovered and run, then the worker stops. It used to wait for ever: the recovered job filled the
    limit without the check that follows a reserve, and no running job was left to wake it."""
    monkeypatch.setenv("QUEUE_CONNECTION", "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "30")
    log = str(tmp_path / "events")
    async with create_app() as app:
        conn = await app.queue.connection()
        first = await SucceedsJob.dispatch(log=log)
        await SucceedsJob.dispatch(log=log)             # left for the next worker
        lost: list[str] = []
        reserve_wait = conn.reserve_wait

        async def answer_lost_once(*args, **kwargs):
            job = await reserve_wait(*args, **kwargs)
            if job is not None and not lost:
                lost.append(job.id)
                raise ConnectionResetError(104, "Connection reset by peer")
            return job

        monkeypatch.setattr(conn, "reserve_wait", answer_lost_once)
        worker = Worker(app, WorkerOptions(sleep=0.05, max_jobs=1))
        await asyncio.wait_for(worker.run(), 20)
        sizes = (await conn.sizes(["default"]))["default"]
    assert lost, "no reserve answer was lost"
    assert [(e["event"], e["job_id"]) for e in read_events(log)] == [("handle", first), ("end", first)]
    assert worker.stop_reason == "--max-jobs 1 reached"
    assert sizes.as_dict() == {"pending": 1, "delayed": 0, "reserved": 0}
