"""The worker against real stores: retries, failures, timeouts, crashed workers.

Forged and broken payloads: tests/test_payload_security.py, tests/test_signing.py, tests/test_payload_fuzz.py."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from bootstrap.app import create_app
from core.worker import Worker, WorkerOptions
from tests.conftest import store_env
from tests.jobs.sample_jobs import (BackoffJob, BlockingJob, BusyLoopJob, FailedRaisesJob, FlakyJob, RecordingJob,
                                    SleepyJob, read_events)


@pytest.fixture(params=["sqlite", "mysql", "pgsql"])
def backend(request):
    store_env(request, request.param)
    return request.param


async def work(app, **options) -> Worker:
    """Work the default queue until nothing is pending, delayed or reserved."""
    options.setdefault("stop_when_empty", True)
    options.setdefault("sleep", 0.05)
    queues = options.setdefault("queues", ("default",))
    conn = await app.queue.connection(options.get("connection"))
    for _ in range(200):
        worker = Worker(app, WorkerOptions(**options))
        await worker.run()
        sizes = await conn.sizes(list(queues))
        if not any(s.pending or s.delayed or s.reserved for s in sizes.values()):
            return worker
        await asyncio.sleep(0.2)
    raise AssertionError("queue never drained")


async def test_a_job_runs_once_with_its_attributes_and_is_removed(backend, tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await RecordingJob.dispatch(log=log, value={"n": [1, 2]})
        await work(app)
        events = read_events(log)
        assert [(e["job_id"], e["attempts"], e["value"]) for e in events] == [(job_id, 1, {"n": [1, 2]})]
        conn = await app.queue.connection()
        assert (await conn.sizes(["default"]))["default"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
        assert await (await app.queue.failed_store()).all() == []


async def test_a_failing_attempt_is_retried_and_then_succeeds(backend, tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        await FlakyJob.dispatch(log=log, succeed_on=2)
        await work(app)
        assert [e["attempts"] for e in read_events(log)] == [1, 2]
        assert await (await app.queue.failed_store()).all() == []


async def test_exhausted_tries_call_failed_once_and_record_the_job(backend, tmp_path, capsys):
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await FlakyJob.dispatch(log=log, succeed_on=99)
        await work(app)
        events = read_events(log)
        assert [e["attempts"] for e in events if e["event"] == "handle"] == [1, 2, 3]
        assert [e for e in events if e["event"] == "failed"] == [
            {"event": "failed", "job_id": job_id, "exception": "flaky attempt 3"}]
        [failed] = await (await app.queue.failed_store()).all()
        assert (failed.uuid, failed.connection, failed.queue) == (job_id, "database", "default")
        assert failed.exception.splitlines()[0] == "ValueError: flaky attempt 3"
        assert "Traceback" in failed.exception and "sample_jobs.py" in failed.exception
        assert json.loads(failed.payload)["data"]["succeed_on"] == 99
        assert (await (await app.queue.connection()).sizes(["default"]))["default"].pending == 0
    out = capsys.readouterr().out
    assert out.count(f"RETRY   FlakyJob [{job_id}]") == 2 and out.count(f"FAIL    FlakyJob [{job_id}]") == 1


async def test_retry_after_list_spaces_the_retries(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        await BackoffJob.dispatch(log=log, succeed_on=3)
        await work(app)
    times = [e["t"] for e in read_events(log)]
    assert len(times) == 3
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 2.0


async def test_a_failed_method_that_raises_still_records_the_job(backend, tmp_path, capsys):
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await FailedRaisesJob.dispatch(log=log)
        await work(app)
        [failed] = await (await app.queue.failed_store()).all()
        assert failed.uuid == job_id and failed.summary == "RuntimeError: handle broke"
    assert [e["event"] for e in read_events(log)] == ["failed"]
    assert "failed() raised RuntimeError: failed() broke too" in capsys.readouterr().out


@pytest.mark.parametrize("job_class", [SleepyJob, BlockingJob, BusyLoopJob])
async def test_timeout_stops_awaiting_and_blocking_code(job_class, tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await job_class.dispatch(log=log, seconds=30)
        started = time.monotonic()
        await work(app)
        elapsed = time.monotonic() - started
        events = read_events(log)
        # Each attempt was cut at ~1 s; none ran to its end; no attempt past max_tries.
        assert [e["event"] for e in events] == ["start"] * job_class.max_tries + ["failed"]
        assert elapsed < 3 * job_class.max_tries
        [failed] = await (await app.queue.failed_store()).all()
        assert failed.uuid == job_id
        assert "TimeoutError" in failed.summary and job_class.__name__ in failed.summary
        assert "timeout of 1s" in failed.summary


async def test_worker_timeout_and_tries_options_override_the_class(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        await FlakyJob.dispatch(log=log, succeed_on=99)
        await work(app, tries=1)
        assert len(read_events(log)) == 2  # one handle, then failed()
        await SleepyJob.dispatch(log=log, seconds=0.6)
        await work(app, timeout=0.3)
        [_, sleepy] = await (await app.queue.failed_store()).all()
        assert "timeout of 0.3s" in sleepy.summary


async def test_a_dead_workers_last_attempt_is_failed_without_running_again(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "1")
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await FailedRaisesJob.dispatch(log=log)   # max_tries = 1
        conn = await app.queue.connection()
        assert (await conn.reserve(["default"])).attempts == 1   # a worker took it, then died
        await asyncio.sleep(2.2)
        await work(app)
        [failed] = await (await app.queue.failed_store()).all()
        assert failed.uuid == job_id
        assert failed.summary.startswith("core.worker.MaxAttemptsExceededError")
        assert "a worker died" in failed.summary
        assert [e["event"] for e in read_events(log)] == ["failed"]   # failed() ran; handle() never did


async def test_queues_are_taken_in_priority_order(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        for n in range(3):
            await RecordingJob.dispatch(log=log, value=f"low{n}").on_queue("low")
            await RecordingJob.dispatch(log=log, value=f"high{n}").on_queue("high")
        await work(app, queues=("high", "low"))
    assert [e["value"] for e in read_events(log)] == ["high0", "high1", "high2", "low0", "low1", "low2"]


async def test_max_jobs_stops_the_worker(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        for n in range(5):
            await RecordingJob.dispatch(log=log, value=n)
        await Worker(app, WorkerOptions(max_jobs=2, sleep=0.05)).run()
        assert [e["value"] for e in read_events(log)] == [0, 1]
        await Worker(app, WorkerOptions(once=True)).run()
        assert len(read_events(log)) == 3


async def test_concurrency_runs_jobs_side_by_side(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        for _ in range(4):
            await SleepyJob.dispatch(log=log, seconds=0.5)
        started = time.monotonic()
        await work(app, concurrency=4)
        assert time.monotonic() - started < 1.5
    assert [e["event"] for e in read_events(log)].count("end") == 4


async def test_a_running_job_keeps_its_reservation_past_the_visibility_timeout(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    log = str(tmp_path / "events")
    async with create_app() as app:
        SleepyJob.timeout = 6
        try:
            await SleepyJob.dispatch(log=log, seconds=4.5)
            task = asyncio.create_task(work(app))
            await asyncio.sleep(3.5)
            # A second worker finds nothing to take: the first keeps renewing its reservation.
            assert await (await app.queue.connection()).reserve(["default"]) is None
            await task
        finally:
            SleepyJob.timeout = 1
    assert [e["event"] for e in read_events(log)] == ["start", "end"]


async def test_a_dropped_database_connection_mid_job_is_survived(mysql_env, tmp_path):
    """The server kills every connection of the worker while a job runs; the job still finishes once."""
    import pymysql

    from tests.servers import MYSQL

    log = str(tmp_path / "events")
    async with create_app() as app:
        SleepyJob.timeout = 10
        try:
            job_id = await SleepyJob.dispatch(log=log, seconds=1.0)
        finally:
            SleepyJob.timeout = 1
        await RecordingJob.dispatch(log=log, value="next")
        task = asyncio.create_task(work(app))
        for _ in range(100):
            if read_events(log):
                break
            await asyncio.sleep(0.05)
        admin = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="", autocommit=True)
        with admin.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (mysql_env,))
            victims = [row[0] for row in cur.fetchall()]
            for victim in victims:
                cur.execute(f"KILL {int(victim)}")
        admin.close()
        assert victims
        await asyncio.wait_for(task, 30)
        events = read_events(log)
        assert [(e["event"], e.get("job_id")) for e in events if e["event"] in ("start", "end")] == [
            ("start", job_id), ("end", job_id)]
        assert [e["value"] for e in events if e["event"] == "handle"] == ["next"]
        assert await (await app.queue.failed_store()).all() == []


async def test_a_failed_method_that_blocks_is_cut_and_the_job_recorded(tmp_path, capsys):
    from tests.jobs.sample_jobs import FailedBlocksJob

    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await FailedBlocksJob.dispatch(log=log)
        started = time.monotonic()
        await work(app)
        assert time.monotonic() - started < 5
        [failed] = await (await app.queue.failed_store()).all()
        assert failed.uuid == job_id and failed.summary == "RuntimeError: handle broke"
    assert "failed() raised JobTimeoutError" in capsys.readouterr().out
