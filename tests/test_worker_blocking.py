"""Job code that blocks the event loop, against the reservations of the jobs beside it and the worker's own store calls.

Issue 11, finding 4: a job blocking the loop for most of its timeout starved the heartbeat, so a
sibling job's reservation lapsed and a second worker ran it too. Finding 12: the watchdog's
timeout could land inside a store call on the connection the worker uses for its own reserves
and acknowledgements, leaving that connection answering each call with the previous one's reply.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootstrap.app import create_app
from core.worker import JobTimeoutError, Watchdog, run_guarded
from tests.conftest import ROOT, use_store
from tests.jobs.sample_jobs import RecordingJob, read_events
from tests.jobs.worker_audit_jobs import BlockerJob, CopyJob, DispatchLoopJob, SiblingJob

VISIBILITY = 4


@pytest.fixture(params=["sqlite", "redis"])
def short_visibility(request, monkeypatch) -> str:
    """The queue on this store with QUEUE_VISIBILITY_TIMEOUT=4, for the worker and the test's own reserver."""
    return use_store(request, monkeypatch, request.param, VISIBILITY)


def start_worker(log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "main.py", "queue:work", "--queue", "sibling,blockers",
                                 "--concurrency", "2", "--sleep", "0.05", "--stop-when-empty", *args],
                                cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT)


async def second_reserver(worker: subprocess.Popen, log: str, until_done: float) -> list[str]:
    """Another worker, as far as the store can tell: once the first runs the sibling, takes what it can
    from the sibling's queue until the first exits."""
    taken: list[str] = []
    deadline = time.monotonic() + until_done
    while worker.poll() is None and not [e for e in read_events(log) if e["event"] == "start"]:
        assert time.monotonic() < deadline, "the sibling never started"
        await asyncio.sleep(0.05)
    async with create_app() as app:
        conn = await app.queue.connection()
        while worker.poll() is None and time.monotonic() < deadline:
            job = await conn.reserve(["sibling"])
            if job is not None:
                taken.append(job.id)
            await asyncio.sleep(0.05)
    return taken


async def test_the_auditors_blocking_job_beside_a_sibling_is_refused_not_run_twice(short_visibility, tmp_path):
    """timeout 3.9 s, visibility 4 s: a job blocking that long lets the sibling's reservation lapse, so
    queue:work refuses the --timeout with one line rather than let a second worker run the sibling."""
    log = str(tmp_path / "events")
    async with create_app():
        await SiblingJob.dispatch(log=log, seconds=6)
        await BlockerJob.dispatch(log=log, first=0.9, seconds=3.8)
    worker_log = tmp_path / "worker.log"
    worker = start_worker(worker_log, "--timeout", "3.9")
    try:
        taken = await second_reserver(worker, log, 15)
        code = await asyncio.to_thread(worker.wait, 30)
    finally:
        if worker.poll() is None:
            worker.kill()
    out = worker_log.read_text()
    assert taken == [], f"a second worker took the sibling while the first still ran it:\n{out}"
    assert code == 1, out
    [line] = out.strip().splitlines()
    assert line.startswith("--timeout 3.9 is too close to QUEUE_VISIBILITY_TIMEOUT (4s): at most 1.95s"), line
    assert read_events(log) == []


async def test_a_job_blocking_up_to_the_largest_accepted_timeout_never_lapses_a_sibling(short_visibility, tmp_path):
    """Blockers with the largest timeout queue:work accepts, each blocking past it, at four phases of the
    heartbeat, one after another beside one sibling: the sibling's reservation holds throughout."""
    log = str(tmp_path / "events")
    limit = 1.95                                    # what the refusal above names
    async with create_app():
        sibling = await SiblingJob.dispatch(log=log, seconds=14)
        for first in (0.0, 0.25, 0.5, 0.75):        # the heartbeat renews each second at this visibility
            await BlockerJob.dispatch(log=log, first=first, seconds=limit + 3, timeout=limit)
    worker_log = tmp_path / "worker.log"
    worker = start_worker(worker_log)
    try:
        taken = await second_reserver(worker, log, 40)
        code = await asyncio.to_thread(worker.wait, 30)
    finally:
        if worker.poll() is None:
            worker.kill()
    out = worker_log.read_text()
    assert taken == [], f"a second worker took the sibling while the first still ran it:\n{out}"
    assert code == 0, out
    events = read_events(log)
    assert [e["event"] for e in events if e["job_id"] == sibling] == ["start", "end"]
    blocks = [e for e in events if e["event"] == "block"]
    assert len(blocks) == 4 and not [e for e in events if e["event"] == "unblocked"]   # each was cut at its timeout
    assert out.count("exceeded its timeout of 1.95s") == 4
    assert "taken over" not in out and "reservation lost" not in out, out


async def test_a_class_timeout_above_the_limit_is_warned_about_once(monkeypatch, tmp_path, caplog):
    from core.worker import Worker, WorkerOptions

    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", str(VISIBILITY))
    log = str(tmp_path / "events")
    async with create_app() as app:
        for _ in range(3):
            await BlockerJob.dispatch(log=log, seconds=0, timeout=3.9).on_queue("default")
        await Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05)).run()
    warnings = [m for m in caplog.messages if m.startswith("tests.jobs.worker_audit_jobs.BlockerJob has timeout")]
    assert warnings == [
        "tests.jobs.worker_audit_jobs.BlockerJob has timeout 3.9s, above the 1.95s that QUEUE_VISIBILITY_TIMEOUT "
        "(4s) allows: if one blocks the event loop that long, the worker cannot renew the reservations of the jobs "
        "beside it, and a second worker may run them"]
    assert len([e for e in read_events(log) if e["event"] == "unblocked"]) == 3


# -- the timeout never lands inside a store call (finding 12) -------------------------------

DRIVER_CODE = """
import time

def read_reply(seconds):
    time.sleep(seconds)          # a driver blocked mid-read: its connection's state is half updated
    return "reply"
"""


def code_from(filename: str):
    """read_reply compiled as if it were code of `filename`: the handler knows code by its file."""
    namespace: dict = {}
    exec(compile(DRIVER_CODE, filename, "exec"), namespace)
    return namespace["read_reply"]


def protected_files() -> list[str]:
    import aiomysql
    import redis

    import core.database
    import core.dispatch
    import core.queue.redis
    return [str(Path(redis.__file__).parent / "asyncio" / "connection.py"),
            str(Path(aiomysql.__file__).parent / "connection.py"),
            str(Path(asyncio.__file__).parent / "streams.py"), core.queue.redis.__file__, core.dispatch.__file__,
            core.database.__file__]


@pytest.mark.parametrize("filename", protected_files(), ids=lambda f: "/".join(Path(f).parts[-2:]))
async def test_a_timeout_waits_until_the_job_is_out_of_a_store_call(filename):
    read_reply = code_from(filename)
    events = []

    async def job():
        events.append(read_reply(1.0))    # the deadline (0.1 s) passes in there: no exception in the driver
        time.sleep(5)                     # back in the job's own code: interrupted here, within a tick
        events.append("not reached")

    watchdog = Watchdog()
    watchdog.start()
    try:
        watchdog.watch(1, 0.1, "job 1 exceeded its timeout of 0.1s")
        started = time.monotonic()
        with pytest.raises(JobTimeoutError):
            await run_guarded(1, job)
        elapsed = time.monotonic() - started
    finally:
        watchdog.stop()
    assert events == ["reply"]
    assert 1.0 <= elapsed < 1.0 + watchdog.overrun, elapsed


async def test_a_timeout_still_interrupts_the_jobs_own_blocking_code(tmp_path):
    read_reply = code_from(str(tmp_path / "app" / "jobs" / "report.py"))
    watchdog = Watchdog()
    watchdog.start()
    try:
        watchdog.watch(1, 0.1, "job 1 exceeded its timeout of 0.1s")
        started = time.monotonic()
        with pytest.raises(JobTimeoutError):
            await run_guarded(1, lambda: asyncio.sleep(0, read_reply(5)))
        assert time.monotonic() - started < 0.1 + watchdog.overrun
    finally:
        watchdog.stop()


async def test_a_job_dispatching_in_a_loop_past_its_timeout_leaves_the_workers_connection_in_step(
        redis_env, monkeypatch, tmp_path, caplog):
    """The job ignores cancellation and keeps dispatching to the worker's own Redis connection while the
    watchdog signals it: it is cut in its own code, and every later call gets its own answer."""
    from core.worker import Worker, WorkerOptions

    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    log = str(tmp_path / "events")
    async with create_app() as app:
        looping = await DispatchLoopJob.dispatch(log=log, seconds=4)
        after = [await RecordingJob.dispatch(log=log, value=n) for n in range(20)]
        worker = Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05))
        code = await asyncio.wait_for(worker.run(), 60)
        conn = await app.queue.connection()
        events = read_events(log)
        dispatched = [e for e in events if e["event"] == "dispatched"]
        assert dispatched, "the job never dispatched"
        # Every copy the job heard stored is stored (those whose cancellation it swallowed may be too);
        # the worker's queue is empty.
        sizes = await conn.sizes(["copies", "default"])
        assert len(dispatched) <= sizes["copies"].pending, (sizes, len(dispatched))
        assert sizes["default"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
        [failed] = await (await app.queue.failed_store()).all()
    assert failed.uuid == looping and failed.summary.startswith("core.worker.JobTimeoutError")
    assert sorted(e["value"] for e in events if e["event"] == "handle") == list(range(20))
    assert [e["event"] for e in events if e["job_id"] == looping and e["event"] != "dispatched"] == ["failed"]
    errors = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == [] and code == 0, errors
    assert CopyJob.queue == "copies" and len(after) == 20
