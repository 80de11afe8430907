"""Stopping a worker: between jobs when asked politely, at once (jobs released) on Ctrl-C twice.

Real `python main.py queue:work` processes on SQLite, MySQL/MariaDB and Redis (the `store` fixture,
with a 30 s visibility timeout: a job seen pending right after a worker exits was released by it).
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bootstrap.app import create_app
from core.worker.loop import RESTART_POLL
from core.worker import CANCEL_GRACE
from tests.conftest import ROOT, run_cli
from tests.jobs.sample_jobs import IgnoresCancelJob, RecordingJob, SlowFirstAttemptJob, StopsItsWorkerJob, read_events

STORES = ["sqlite", "mysql", "pgsql", "redis"]


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def queue_size(store) -> dict:
    """What `queue:size --json` shows the user."""
    result = await asyncio.to_thread(run_cli, "queue:size", store.connection, "--json", check=True)
    size = json.loads(result.stdout)["queues"]["default"]
    assert size.pop("waiting") == 0          # SPEC 11: no job waits on others until chains (SPEC 13)
    return size


def started(log: str, job_id: str) -> bool:
    return any(e["event"] == "start" and e["job_id"] == job_id for e in read_events(log))


# Each way of stopping a worker politely, with a job running (SIGTERM is sent twice): the job completes
# (DONE, acknowledged), the job queued behind it is not started, and the worker exits 0. Signals and
# queue:restart go through the store, so they run on every store; the limits are the worker's own.
STOPS = [(s, "SIGTERM") for s in STORES] + [(s, "queue:restart") for s in STORES] + [
    ("sqlite", "--max-jobs"), ("sqlite", "--max-time"), ("sqlite", "--memory")]
OPTIONS = {"--max-jobs": ["--max-jobs", "1"], "--max-time": ["--max-time", "1"], "--memory": ["--memory", "1"]}


@pytest.mark.parametrize("store, stop", STOPS, indirect=["store"], ids=[f"{s}-{how}" for s, how in STOPS])
async def test_a_polite_stop_waits_for_the_running_job_and_exits_zero(store, stop, tmp_path):
    log = str(tmp_path / "events")
    # queue:restart is a process of its own to start: the job runs until it has returned (at most 20 s)
    go = str(tmp_path / "restart-asked")
    job_id = await SlowFirstAttemptJob.dispatch(log=log, seconds=20.0 if stop == "queue:restart" else 2.0,
                                                until=go if stop == "queue:restart" else "")
    behind = await RecordingJob.dispatch(log=log, value="behind")
    worker = store.start_worker("--sleep", "0.05", *OPTIONS.get(stop, []))
    try:
        await wait_for(lambda: started(log, job_id), what="the job to start")
        if stop == "SIGTERM":
            worker.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            worker.send_signal(signal.SIGTERM)        # still graceful (a dying supervisor's workers get two)
        elif stop == "queue:restart":
            await asyncio.to_thread(run_cli, "queue:restart", check=True)
            asked_at = time.time()
            # The worker looks at the restart signal at most every RESTART_POLL: let the job end after
            # that much time since it started, so the look that follows it is not skipped.
            await asyncio.sleep(max(0.0, read_events(log)[0]["t"] + RESTART_POLL + 0.1 - time.time()))
            Path(go).touch()
        code = await asyncio.to_thread(worker.wait, 30)
    finally:
        store.kill(worker)
    out = store.worker_logs()
    assert code == 0, out
    assert f"DONE    SlowFirstAttemptJob [{job_id}]" in out and "Traceback" not in out
    assert [e["event"] for e in read_events(log)] == ["start", "end"]          # completed; the next not started
    assert f"RecordingJob [{behind}]" not in out
    if stop == "queue:restart":
        assert read_events(log)[1]["t"] > asked_at                             # the restart came inside the job
    assert await queue_size(store) == {"pending": 1, "delayed": 0, "reserved": 0}   # acknowledged: gone
    assert await (await store.app.queue.failed_store()).all() == []


async def test_a_job_reserved_as_the_stop_came_goes_back_untried(store, tmp_path):
    """The stop lands just after a job ended: a worker at concurrency 1 may have asked for the next job
    already (on Redis it asks in the same step as the acknowledgement). That job is not started, is
    back on the queue, not reserved, and its first real run is attempt 1: a stop burns no try."""
    log = str(tmp_path / "events")
    first = await StopsItsWorkerJob.dispatch(log=log)
    behind = [await RecordingJob.dispatch(log=log, value=n) for n in range(3)]
    worker = store.start_worker("--sleep", "0.05")
    try:
        code = await asyncio.to_thread(worker.wait, 30)
    finally:
        store.kill(worker)
    out = store.worker_logs()
    assert code == 0, out
    assert f"DONE    StopsItsWorkerJob [{first}]" in out and "Traceback" not in out
    assert [e["job_id"] for e in read_events(log)] == [first]                  # nothing started after the stop
    assert await queue_size(store) == {"pending": 3, "delayed": 0, "reserved": 0}
    again = await asyncio.to_thread(run_cli, "queue:work", store.connection, "--stop-when-empty", "--sleep", "0.05")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [(e["job_id"], e["attempts"]) for e in read_events(log)[1:]] == [(job_id, 1) for job_id in behind]
    assert await (await store.app.queue.failed_store()).all() == []


async def test_a_second_sigint_releases_the_running_job_at_once(store, tmp_path):
    log = str(tmp_path / "events")
    job_id = await SlowFirstAttemptJob.dispatch(log=log, seconds=60)      # timeout 20 s, visibility 30 s
    worker = store.start_worker("--sleep", "0.05")
    try:
        await wait_for(lambda: started(log, job_id), what="the job to start")
        worker.send_signal(signal.SIGINT)
        await asyncio.sleep(0.5)
        assert worker.poll() is None                                  # the first one waits for the job
        worker.send_signal(signal.SIGINT)
        second_at = time.monotonic()
        code = await asyncio.to_thread(worker.wait, 30)
        took = time.monotonic() - second_at
    finally:
        store.kill(worker)
    out = store.worker_logs()
    assert code == 130, out
    assert took < 3.0, out                                            # promptly, not after the job's 20 s timeout
    assert "SIGINT while stopping: cancelling 1 running job(s)" in out
    assert f"RETRY   SlowFirstAttemptJob [{job_id}]" in out and "JobInterrupted" in out
    # Back on the queue now, with its attempt counted, not left reserved until the visibility timeout.
    assert await queue_size(store) == {"pending": 1, "delayed": 0, "reserved": 0}
    again = await asyncio.to_thread(run_cli, "queue:work", store.connection, "--stop-when-empty", "--sleep", "0.05")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"DONE    SlowFirstAttemptJob [{job_id}]" in again.stdout
    assert [(e["event"], e["attempts"]) for e in read_events(log)] == [("start", 1), ("start", 2), ("end", 2)]
    assert await (await store.app.queue.failed_store()).all() == []


def test_sigint_after_sigterm_does_not_wait_for_code_that_ignores_cancellation(tmp_path):
    """The job swallows the cancellation: the worker releases it after the grace and exits anyway."""
    log = str(tmp_path / "events")

    async def dispatch():
        async with create_app():
            return await IgnoresCancelJob.dispatch(log=log, seconds=120)

    job_id = asyncio.run(dispatch())
    worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "--sleep", "0.05", "--timeout", "30"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not read_events(log) and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        worker.send_signal(signal.SIGINT)
        second_at = time.monotonic()
        out, _ = worker.communicate(timeout=30)
        took = time.monotonic() - second_at
    finally:
        worker.kill()
    assert worker.returncode == 130, out                              # 128 + SIGINT
    assert took < CANCEL_GRACE + 2.5, out
    assert f"IgnoresCancelJob [{job_id}] was interrupted, and ignored cancellation for 2s" in out
    assert f"RETRY   IgnoresCancelJob [{job_id}]" in out
    size = json.loads(run_cli("queue:size", "--json", check=True).stdout)
    assert size["queues"]["default"] == {"pending": 1, "delayed": 0, "reserved": 0, "waiting": 0}
