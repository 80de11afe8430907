"""SPEC 10 in the worker and commands: the events a user's listener hears, through real worker
processes on SQLite, MySQL and Redis (APP_LISTENERS=tests.recording_listeners records them).

What the settle step reports when a store call fails or the reservation was lost, and the
Announcer's order, bound and stop grace, are tested in-process in tests/test_worker_events_settle.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bootstrap.app import create_app
from tests.conftest import ROOT, run_cli, store_env
from tests.hostile_support import RawStore
from tests.jobs.event_jobs import LastTryJob, MiddlewareTimedJob, TimedJob
from tests.jobs.sample_jobs import FailedRaisesJob, FlakyJob, read_events
from tests.test_signing import resign

JOB_FIELDS = ("connection", "queue", "job_id", "job_class", "attempts")


@pytest.fixture(params=["sqlite", "mysql", "pgsql", "redis"])
def store(request, monkeypatch, tmp_path):
    """Workers and commands on this store, with the recording listener and a log of what it heard."""
    store_env(request, request.param)
    monkeypatch.setenv("QUEUE_CONNECTION", "redis" if request.param == "redis" else "database")
    return request.param


def listening(tmp_path, misbehave: str = "") -> dict[str, str]:
    """The environment of a worker or command whose events the recording listener hears. Only
    theirs: this process keeps no listener (its dispatches' JobQueued are no part of the tests)."""
    return {"APP_LISTENERS": "tests.recording_listeners", "EVENTS_LOG": str(tmp_path / "heard"),
            "EVENTS_MISBEHAVE": misbehave}


def heard(tmp_path) -> list[dict]:
    return read_events(tmp_path / "heard")


def of_job(events: list[dict], job_id: str) -> list[str]:
    return [e["event"] for e in events if e.get("job_id") == job_id]


def work(tmp_path, misbehave: str = "") -> subprocess.CompletedProcess:
    return run_cli("queue:work", "--stop-when-empty", "--sleep", "0.1", env=listening(tmp_path, misbehave),
                   check=True)


async def test_a_job_failing_once_then_succeeding_is_heard_in_order(store, tmp_path):
    async with create_app():
        job_id = await FlakyJob.dispatch(log=str(tmp_path / "ran"), succeed_on=2)
    work(tmp_path)
    events = heard(tmp_path)
    assert [e["event"] for e in events] == ["WorkerStarting", "JobProcessing", "JobReleased", "JobProcessing",
                                            "JobProcessed", "WorkerStopping"]
    jobs = [e for e in events if e["event"].startswith("Job")]
    name = "redis" if store == "redis" else "database"
    assert {tuple(e[f] for f in JOB_FIELDS) for e in jobs} >= {
        (name, "default", job_id, "tests.jobs.sample_jobs.FlakyJob", 1),
        (name, "default", job_id, "tests.jobs.sample_jobs.FlakyJob", 2)}
    assert [e["attempts"] for e in jobs] == [1, 1, 2, 2]
    released, processed = jobs[1], jobs[3]
    assert (released["reason"], released["outcome"], released["delay"]) == ("exception", "retried", 0)
    assert released["exception"] == "ValueError: flaky attempt 1"
    assert processed["outcome"] == "succeeded" and processed["duration"] >= 0
    assert events[-1]["reason"] == "queue empty" and events[-1]["status"] == 0
    assert len({e["pid"] for e in events}) == 1           # heard in the worker's own process
    ran = read_events(tmp_path / "ran")
    assert [e["attempts"] for e in ran] == [1, 2]


async def test_job_processing_is_heard_before_the_middleware_and_handle_run(store, tmp_path):
    """SPEC 10: JobProcessing fires before the middleware. A listener that sets something up for the
    job (a Laravel user's habit) has run when the middleware begins. (Listeners were heard from a task
    of their own, so the middleware and handle() had begun before it.)"""
    async with create_app():
        job_id = await MiddlewareTimedJob.dispatch(log=str(tmp_path / "ran"))
    work(tmp_path)
    ran = {(e["event"], e["job_id"]): e["t"] for e in read_events(tmp_path / "ran")}
    [processing] = [e for e in heard(tmp_path) if e["event"] == "JobProcessing" and e["job_id"] == job_id]
    assert processing["heard"] <= ran[("middleware", job_id)] <= ran[("start", job_id)]


async def test_a_listener_that_raises_changes_nothing(store, tmp_path, monkeypatch):
    async with create_app() as app:
        ok = await TimedJob.dispatch(log=str(tmp_path / "ran"))
        bad = await FailedRaisesJob.dispatch(log=str(tmp_path / "ran"))
        result = work(tmp_path, "raise")
        failed = await (await app.queue.failed_store()).all()
        sizes = await (await app.queue.connection()).sizes(["default"])
    assert [f.uuid for f in failed] == [bad]              # the failing job failed; the good one did not
    assert sizes["default"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert of_job(heard(tmp_path), ok) == ["JobProcessing", "JobProcessed"]
    assert of_job(heard(tmp_path), bad) == ["JobProcessing", "JobFailed"]
    raised = [line for line in result.stdout.splitlines() if "raised RuntimeError: listener bug" in line]
    assert len(raised) == 6 and all("Traceback" not in line for line in result.stdout.splitlines())
    assert any(f"DONE    TimedJob [{ok}]" in line for line in result.stdout.splitlines())


async def test_a_listener_that_overruns_changes_nothing_and_the_worker_goes_on(tmp_path):
    async with create_app() as app:
        first = await TimedJob.dispatch(log=str(tmp_path / "ran"))
        second = await TimedJob.dispatch(log=str(tmp_path / "ran"))
        result = work(tmp_path, "sleep")
        assert await (await app.queue.failed_store()).all() == []
    ran = {(e["event"], e["job_id"]): e["t"] for e in read_events(tmp_path / "ran")}
    events = heard(tmp_path)
    # SPEC 10: JobProcessing is heard before the middleware and handle() run. The first job's was heard
    # by the recorder only after the slow listener's cut (5 s), and the job started after that; the
    # slow listener was cut, not waited for, and the outcome is the same.
    [processing] = [e for e in events if e["event"] == "JobProcessing" and e["job_id"] == first]
    assert processing["heard"] < ran[("start", first)]
    assert of_job(events, first) == of_job(events, second) == ["JobProcessing", "JobProcessed"]
    assert [line for line in result.stdout.splitlines() if "overran" in line] == [
        line for line in result.stdout.splitlines() if "listener slow of JobProcessing overran 5s and was cut" in line]
    assert len([line for line in result.stdout.splitlines() if "overran" in line]) == 1
    # The job's time is its own: the DONE line and JobProcessed.duration leave the listener's 5 s out.
    [processed] = [e for e in events if e["event"] == "JobProcessed" and e["job_id"] == first]
    assert processed["duration"] < 2.5, processed
    [done] = [line for line in result.stdout.splitlines() if " DONE " in line and first in line]
    assert float(done.rsplit(" ", 1)[1].removesuffix("ms")) < 2500, done


async def test_a_worker_killed_on_the_last_try_is_failed_by_the_next_with_max_attempts_exceeded(store, tmp_path,
                                                                                                   monkeypatch):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    ran = tmp_path / "ran"
    async with create_app() as app:
        job_id = await LastTryJob.dispatch(log=str(ran), seconds=60)
        worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "--sleep", "0.1"], cwd=ROOT,
                                  env={**os.environ, **listening(tmp_path)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: read_events(ran) and of_job(heard(tmp_path), job_id), "the job to start")
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        killed = worker.pid
        for _ in range(20):        # its reservation lapses 2 s after the dead worker last renewed it
            time.sleep(1)
            work(tmp_path)
            if await (await app.queue.failed_store()).all():
                break
        [failed] = await (await app.queue.failed_store()).all()
    assert failed.uuid == job_id
    events = [e for e in heard(tmp_path) if e.get("job_id") == job_id]
    assert [(e["event"], e["pid"] == killed) for e in events] == [("JobProcessing", True), ("JobFailed", False)]
    assert events[1]["exception"].startswith("core.worker.MaxAttemptsExceededError: ")
    assert events[1]["attempts"] == 2 and events[1]["job_class"] == "tests.jobs.event_jobs.LastTryJob"


def wait_for(check, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def test_rejected_payloads_are_heard_as_failed(store, tmp_path, monkeypatch):
    monkeypatch.setenv("APP_KEY", "events-test-key")
    unsigned = {"uuid": "unsigned-1", "job": "tests.jobs.event_jobs.TimedJob", "queue": "default", "maxTries": 1,
                "timeout": 5, "retryAfter": [0], "data": {}}
    outside = {**unsigned, "uuid": "outside-1", "job": "tests.jobs_evil.payload.EvilJob"}
    outside["signature"] = resign(outside, "events-test-key")    # signed: refused for its class alone
    async with create_app() as app:
        await app.queue.connection()            # tables exist before the raw writes
        raw = RawStore(store)
        try:
            raw.push(json.dumps(outside), job_id="outside-1")
            raw.push(json.dumps(unsigned), job_id="unsigned-1")
        finally:
            raw.close()
        work(tmp_path)
        recorded = {f.uuid: f.summary for f in await (await app.queue.failed_store()).all()}
    failed = {e["job_id"]: e for e in heard(tmp_path) if e["event"] == "JobFailed"}
    assert set(failed) == set(recorded) == {"outside-1", "unsigned-1"}
    assert failed["unsigned-1"]["exception"] == recorded["unsigned-1"]
    assert "payload signature is missing" in failed["unsigned-1"]["exception"]
    assert failed["outside-1"]["job_class"] == "tests.jobs_evil.payload.EvilJob"
    assert "outside the job packages" in failed["outside-1"]["exception"]
    assert not [e for e in heard(tmp_path) if e["event"] == "JobProcessing"]      # neither ever ran
    assert "tests.jobs_evil" not in sys.modules


async def test_queue_retry_is_heard_as_retry_requested_in_the_commands_process(store, tmp_path):
    async with create_app():
        job_id = await FailedRaisesJob.dispatch(log=str(tmp_path / "ran"))
    work(tmp_path)
    before = len(heard(tmp_path))
    result = run_cli("queue:retry", "all", env=listening(tmp_path), check=True)
    assert job_id in result.stdout
    [retried] = heard(tmp_path)[before:]
    name = "redis" if store == "redis" else "database"
    assert (retried["event"], retried["job_id"], retried["connection"], retried["queue"], retried["attempts"]) == (
        "JobRetryRequested", job_id, name, "default", 0)
    assert retried["job_class"] == "tests.jobs.sample_jobs.FailedRaisesJob"
