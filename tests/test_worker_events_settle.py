"""The settle step's events on each store, in-process: each outcome reports what it stored, and
nothing when the store call failed or the reservation was lost; the Announcer that delivers them
keeps their order, bounds its backlog and its wait at stop; with no listener nothing is built."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from bootstrap.app import create_app
from core import events
from core.events import Announcer, Event, JobFailed, JobProcessed, JobQueued, listen
from core.outage import OutageLog
from core.worker import Attempt, Delete, Done, Fail, Release, Retry, Worker, WorkerOptions
from core.worker import announce as announce_module
from core.worker import settle as settle_module
from core.worker.settle import Settler
from core.worker.timeouts import JobTimeoutError, Timeouts
from tests.jobs.sample_jobs import FailedRaisesJob, FlakyJob, RecordingJob

log = logging.getLogger("worker")


@pytest.fixture(autouse=True)
def heard(monkeypatch) -> list[Event]:
    """Every event but the dispatches' JobQueued, recorded by the one listener registered."""
    monkeypatch.setattr(events, "_listeners", {})
    monkeypatch.setattr(events, "_discovered", True)
    got: list[Event] = []

    @listen(Event)
    def recorder(event: Event) -> None:
        if not isinstance(event, JobQueued):
            got.append(event)

    return got


class JobExpired(Exception):
    """Stands for SPEC 9's exception: an expired job is Fail(JobExpired(...))."""


async def settle(store, outcome, conn=None) -> Attempt:
    """Reserve the one job queued and settle it with `outcome`; returns once its events were heard."""
    reserved = await store.conn.reserve(["default"])
    assert reserved is not None
    attempt = Attempt(reserved, slot=1, started=time.monotonic(), label=f"RecordingJob [{reserved.id}]")
    timeouts = Timeouts(hand_over=lambda *_: None, blocked=lambda _: None)
    settler = Settler(conn or store.conn, OutageLog(log, store.conn, []), timeouts, threading.Lock(), [], 30)
    await settler.settle(attempt, outcome)
    await settler.drain()
    await settler.events.announcer.close(5)
    return attempt


def summary(event: Event) -> tuple:
    return (type(event).__name__, getattr(event, "reason", None), getattr(event, "outcome", None))


@pytest.mark.parametrize("reason", ["release", "middleware"])
async def test_a_release_is_heard_with_its_reason(store, tmp_path, heard, reason):
    job_id = await RecordingJob.dispatch(log=str(tmp_path / "ran"))
    await settle(store, Release(30, reason))
    [event] = heard
    assert summary(event) == ("JobReleased", reason, "released")
    assert (event.job_id, event.delay, event.exception, event.connection) == (job_id, 30, None, store.conn.name)


async def test_a_timed_out_try_is_heard_as_timed_out_then_released(store, tmp_path, heard):
    await RecordingJob.dispatch(log=str(tmp_path / "ran"))
    await settle(store, Retry(5, JobTimeoutError("RecordingJob exceeded its timeout of 1s")))
    assert [summary(e) for e in heard] == [("JobTimedOut", None, "timeout"), ("JobReleased", "exception", "retried")]
    assert heard[0].exception == heard[1].exception == \
        "core.worker.JobTimeoutError: RecordingJob exceeded its timeout of 1s"


async def test_deleted_jobs_are_heard_as_skipped_or_expired(store, tmp_path, heard):
    await RecordingJob.dispatch(log=str(tmp_path / "ran"))
    await RecordingJob.dispatch(log=str(tmp_path / "ran"))
    await settle(store, Delete("skipped"))
    await settle(store, Delete("expired"))
    assert [summary(e) for e in heard] == [("JobProcessed", None, "skipped"), ("JobExpired", None, "expired")]
    assert heard[1].quietly


async def test_an_expired_job_recorded_failed_is_heard_as_expired_then_failed(store, tmp_path, heard):
    job_id = await RecordingJob.dispatch(log=str(tmp_path / "ran"))
    await settle(store, Fail(JobExpired("not started within 300s of being due")))
    assert [summary(e) for e in heard] == [("JobExpired", None, "expired"), ("JobFailed", None, "failed")]
    assert not heard[0].quietly and heard[1].job_id == job_id
    [row] = await (await store.app.queue.failed_store()).all()
    assert heard[1].exception == row.summary


async def test_nothing_is_heard_when_the_reservation_was_lost(store, tmp_path, heard):
    for _ in range(3):
        await RecordingJob.dispatch(log=str(tmp_path / "ran"))

    class TakenOver:
        """The store's answers for a reservation another worker now holds."""
        def __init__(self, conn):
            self._conn = conn

        def __getattr__(self, name):
            return getattr(self._conn, name)

        async def release(self, job, delay=0, **kw):
            return False

        async def release_failed(self, job, delay, error):
            return False

        async def mark_failing(self, job, exception, failed_ran=False):
            return False

        async def fail(self, job, exception):
            return False

        async def acknowledge_many(self, jobs):
            return [False for _ in jobs]

    for outcome in (Retry(0, ValueError("x")), Fail(ValueError("x")), Done()):
        await settle(store, outcome, TakenOver(store.conn))
    assert heard == []


async def test_nothing_is_heard_when_the_store_call_failed(store, tmp_path, heard, monkeypatch):
    monkeypatch.setattr(settle_module, "SETTLE_TRIES", 1)
    await RecordingJob.dispatch(log=str(tmp_path / "ran"))

    class Failing:
        def __init__(self, conn):
            self._conn = conn

        def __getattr__(self, name):
            return getattr(self._conn, name)

        async def release(self, job, delay=0, **kw):
            raise RuntimeError("disk full")

        async def release_failed(self, job, delay, error):
            raise RuntimeError("disk full")

    await settle(store, Retry(0, ValueError("x")), Failing(store.conn))
    assert heard == []


# -- the worker, in-process ----------------------------------------------------------------------

async def test_without_a_listener_no_worker_event_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(events, "_listeners", {})
    builds = []

    def built(**fields):
        builds.append(fields)       # noted here too: the worker may swallow what this raises
        raise AssertionError("an event was built with no listener")

    for name in ("JobProcessing", "JobProcessed", "JobReleased", "JobFailed", "JobTimedOut", "JobExpired",
                 "WorkerStarting", "WorkerStopping"):
        monkeypatch.setattr(announce_module, name, built)
    async with create_app() as app:
        await FlakyJob.dispatch(log=str(tmp_path / "ran"), succeed_on=2)
        await FailedRaisesJob.dispatch(log=str(tmp_path / "ran"))
        worker = Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05))
        assert await worker.run() == 0
        [failed] = await (await app.queue.failed_store()).all()
    assert failed.job_class == "tests.jobs.sample_jobs.FailedRaisesJob"
    assert builds == []


# -- the Announcer ---------------------------------------------------------------------------------

def failed_event(n: int) -> JobFailed:
    return JobFailed(connection="redis", queue="default", job_id=f"j-{n}", job_class="a.B", attempts=1,
                     exception="ValueError: x")


async def test_the_announcer_delivers_in_order_without_making_the_caller_wait(heard):
    release = asyncio.Event()

    @listen(JobFailed)
    async def slow(event):
        await release.wait()

    announcer = Announcer()
    for n in range(3):
        announcer.announce(failed_event(n))        # returns at once: nothing heard yet
    assert heard == []
    release.set()
    await announcer.close(5)
    assert [e.job_id for e in heard] == ["j-0", "j-1", "j-2"]


async def test_the_announcer_drops_past_its_backlog_with_one_line(heard, caplog):
    announcer = Announcer(backlog=2)
    with caplog.at_level(logging.WARNING, logger="events"):
        for n in range(5):
            announcer.announce(failed_event(n))
        await announcer.close(5)
    assert [e.job_id for e in heard] == ["j-0", "j-1"]
    lines = [r.getMessage() for r in caplog.records if r.name == "events"]
    assert lines == ["2 events wait for slow listeners; dropping new ones until they catch up",
                     "listeners caught up; 3 event(s) were dropped meanwhile"]


async def test_a_stopping_announcer_waits_only_its_grace(heard, caplog):
    @listen(JobProcessed)
    async def stuck(event):
        await asyncio.sleep(60)

    announcer = Announcer()
    announcer.announce(JobProcessed(connection="redis", queue="default", job_id="j", job_class="a.B", attempts=1,
                                    duration=0.1))
    announcer.announce(failed_event(1))
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="events"):
        await announcer.close(0.3)
    assert time.monotonic() - started < 5
    assert [r.getMessage() for r in caplog.records if r.name == "events"] == [
        "2 event(s) not heard: listeners were still busy 0.3s after the worker stopped"]
    # The recorder (registered first) heard the first event; `stuck` held the second back until the stop cut it.
    assert [type(e).__name__ for e in heard] == ["JobProcessed"]
