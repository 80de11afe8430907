"""Dispatching: pending dispatches, lazy boot, sync running, and refusals that push nothing."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta

import pytest

from bootstrap.app import create_app
from core.errors import FrameworkError, InvalidQueueName
from core.job import SerializationError
from core.queue import dispatch
from core.worker import Worker, WorkerOptions
from tests.conftest import ROOT
from tests.jobs.sample_jobs import FlakyJob, RecordingJob, read_events


async def pending(app, queue="default") -> int:
    sizes = await (await app.queue.connection()).sizes([queue])
    return sizes[queue].pending + sizes[queue].delayed


async def test_dispatch_returns_the_id_the_worker_sees(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await RecordingJob.dispatch(log=log, value="x")
        assert len(job_id) == 36 and await pending(app) == 1
        await Worker(app, WorkerOptions(stop_when_empty=True)).run()
    assert read_events(log)[0]["job_id"] == job_id


async def test_a_job_built_by_hand_is_dispatched_with_its_attributes(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        job = RecordingJob()
        job.log, job.value = log, [1, 2]
        job_id = await dispatch(job, queue="manual")
        await Worker(app, WorkerOptions(queues=("manual",), stop_when_empty=True)).run()
    assert [(e["job_id"], e["value"]) for e in read_events(log)] == [(job_id, [1, 2])]


@pytest.mark.parametrize("delay", [2, timedelta(seconds=2), "datetime"])
async def test_a_delayed_job_is_not_taken_before_it_is_due(delay, tmp_path):
    if delay == "datetime":
        delay = datetime.now() + timedelta(seconds=2)   # naive: local time
    async with create_app() as app:
        await RecordingJob.dispatch(log=str(tmp_path / "e"), value=1).delay(delay)
        conn = await app.queue.connection()
        assert (await conn.sizes(["default"]))["default"].delayed == 1
        assert await conn.reserve(["default"]) is None
        deadline = time.monotonic() + 5
        while (job := await conn.reserve(["default"])) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert job is not None and time.monotonic() < deadline


async def test_on_queue_and_on_connection(tmp_path, monkeypatch):
    log = str(tmp_path / "events")
    async with create_app() as app:
        await RecordingJob.dispatch(log=log, value="q").on_queue("high")
        assert await pending(app, "high") == 1
        await RecordingJob.dispatch(log=log, value="now").on_connection("sync")
        assert [e["value"] for e in read_events(log)] == ["now"]   # ran at once, in this process


async def test_sync_connection_runs_at_dispatch_and_failed_runs_on_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QUEUE_CONNECTION", "sync")
    log = str(tmp_path / "events")
    async with create_app():
        await RecordingJob.dispatch(log=log, value=(1, 2))
        assert read_events(log)[0]["type"] == "tuple"   # restored as a worker would restore it
        with pytest.raises(ValueError, match="flaky attempt 1"):
            await FlakyJob.dispatch(log=log, succeed_on=5)
    assert [e["event"] for e in read_events(log)] == ["handle", "handle", "failed"]


async def test_dispatch_sync_runs_in_process(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        await RecordingJob.dispatch_sync(log=log, value=3)
        assert [e["value"] for e in read_events(log)] == [3] and await pending(app) == 0


async def test_refused_dispatches_push_nothing(tmp_path, caplog):
    import gc

    async with create_app() as app:
        with pytest.raises(SerializationError, match="RecordingJob.value"):
            await RecordingJob.dispatch(log="x", value=object())
        with pytest.raises(InvalidQueueName):
            await RecordingJob.dispatch(log="x").on_queue("no spaces allowed")
        with pytest.raises(FrameworkError, match="delay must be"):
            await RecordingJob.dispatch(log="x").delay("soon")
        # A delay no store can hold (MySQL's due time ended in a raw DataError traceback), or never.
        for never in (3_000_000_000, float("inf"), float("nan"), timedelta(days=365 * 60)):
            with pytest.raises(FrameworkError, match="delay must be at most 1576800000 seconds"):
                await RecordingJob.dispatch(log="x").delay(never)
        gc.collect()
        assert await pending(app) == 0
    # The refusal is the whole story: no "was never awaited" line about the dispatch it cut short.
    assert "never awaited" not in caplog.text


def test_a_script_dispatches_with_lazy_boot_and_exits(tmp_path):
    script = ("import asyncio\nfrom app.jobs.send_email_job import SendEmailJob\n"
              "async def main():\n    print(await SendEmailJob.dispatch(to='a@example.com', subject='x'))\n"
              "asyncio.run(main())\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    import sqlite3

    rows = sqlite3.connect(os.environ["DB_DATABASE"]).execute("SELECT queue, payload FROM jobs").fetchall()
    assert len(rows) == 1 and rows[0][0] == "emails" and result.stdout.strip() in rows[0][1]


async def test_memory_limit_stops_the_worker_after_a_job(tmp_path, caplog):
    log = str(tmp_path / "events")
    async with create_app() as app:
        for n in range(3):
            await RecordingJob.dispatch(log=log, value=n)
        await Worker(app, WorkerOptions(memory=1, sleep=0.05)).run()
    assert len(read_events(log)) == 1
    assert "over --memory 1MB" in caplog.text


async def test_concurrent_first_dispatches_share_one_connection(tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        connections = await asyncio.gather(*[app.queue.connection() for _ in range(5)])
        assert len({id(c) for c in connections}) == 1
        ids = await asyncio.gather(*[RecordingJob.dispatch(log=log, value=n) for n in range(20)])
        assert len(set(ids)) == 20 and await pending(app) == 20
