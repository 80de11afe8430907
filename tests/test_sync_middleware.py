"""dispatch_sync and the sync connection run a job as a worker would: through its middleware, and
ending as the job or a middleware chose (SPEC 9), in the dispatching process."""
from __future__ import annotations

import logging

import pytest

from bootstrap.app import create_app
from core.queue.middleware import RateLimited
from tests.jobs.control_jobs import ControlJob
from tests.jobs.middleware_jobs import SettingsJob, Tag
from tests.jobs.sample_jobs import read_events


@pytest.fixture(params=["dispatch_sync", "sync connection"])
def run(request, monkeypatch):
    """Runs a job class with attributes the way the parameter says; returns what the call returned."""
    if request.param == "sync connection":
        monkeypatch.setenv("QUEUE_CONNECTION", "sync")

        async def dispatched(cls, through=None, **attrs):
            pending = cls.dispatch(**attrs)
            return await (pending.through(through) if through else pending)
        return dispatched

    async def now(cls, through=None, **attrs):
        assert through is None
        return await cls.dispatch_sync(**attrs)
    return now


async def test_the_job_runs_through_its_middleware(run, tmp_path):
    log = str(tmp_path / "events")
    async with create_app():
        await run(SettingsJob, log=log)
    assert [e["event"] for e in read_events(log)] == ["class>", "handle", "<class"]


async def test_a_dispatch_through_middleware_runs_inside_the_jobs_own(monkeypatch, tmp_path):
    monkeypatch.setenv("QUEUE_CONNECTION", "sync")
    log = str(tmp_path / "events")
    async with create_app():
        await SettingsJob.dispatch(log=log).through([Tag("dispatch", log)])
    assert [e["event"] for e in read_events(log)] == ["class>", "dispatch>", "handle", "<dispatch", "<class"]


async def test_fail_from_handle_calls_failed_once_and_is_not_raised(run, tmp_path):
    log = str(tmp_path / "events")
    async with create_app():
        await run(ControlJob, log=log, action="fail")
    events = read_events(log)
    assert [e["event"] for e in events] == ["handle", "failed"]
    assert events[1]["exception"] == "LookupError: the device is gone"


async def test_delete_from_handle_ends_the_job_quietly(run, tmp_path):
    log = str(tmp_path / "events")
    async with create_app():
        await run(ControlJob, log=log, action="delete")
    assert [e["event"] for e in read_events(log)] == ["handle"]


async def test_an_exception_calls_failed_and_reaches_the_caller(run, tmp_path):
    log = str(tmp_path / "events")
    async with create_app():
        with pytest.raises(ValueError, match="not worth retrying"):
            await run(ControlJob, log=log, action="raise")
    assert [e["event"] for e in read_events(log)] == ["handle", "failed"]


async def test_a_rate_limited_job_over_its_limit_is_released_not_run(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("QUEUE_CONNECTION", "sync")
    log = str(tmp_path / "events")
    limit = RateLimited("sync-test", allow=1, every=60)
    async with create_app():
        await ControlJob.dispatch(log=log).through([limit])
        with caplog.at_level(logging.WARNING, logger="dispatch"):
            await ControlJob.dispatch(log=log).through([limit])
    assert [e["event"] for e in read_events(log)] == ["handle", "done"]     # the second never ran
    assert "was released (by its middleware) on the sync connection" in caplog.text


@pytest.mark.parametrize(("action", "heard"), [
    ("", [("JobProcessing", None), ("JobProcessed", "succeeded")]),
    ("delete", [("JobProcessing", None), ("JobProcessed", "skipped")]),
    ("fail", [("JobProcessing", None), ("JobFailed", "LookupError: the device is gone")]),
    ("raise", [("JobProcessing", None), ("JobFailed", "ValueError: not worth retrying")]),
])
async def test_a_job_run_inline_is_heard_as_a_worker_reports_it(run, tmp_path, action, heard):
    """SPEC 10: listeners run where the event happens. dispatch_sync and the sync connection heard
    nothing of the run (as Laravel's sync queue, they now fire JobProcessing, then JobProcessed or
    JobFailed); a release there puts nothing back, so it is heard as nothing."""
    from core import events as core_events
    from core.events import JobEvent, JobQueued

    got = []

    def listener(event):
        if not isinstance(event, JobQueued):
            got.append((type(event).__name__, getattr(event, "outcome", None) if type(event).__name__ ==
                        "JobProcessed" else getattr(event, "exception", None), event.connection, event.attempts))

    core_events.listen(JobEvent)(listener)
    try:
        async with create_app():
            try:
                await run(ControlJob, log=str(tmp_path / "events"), action=action)
            except ValueError:
                assert action == "raise"
    finally:
        core_events.forget(listener)
    assert [(name, detail) for name, detail, _, _ in got] == heard
    assert {(connection, attempts) for _, _, connection, attempts in got} == {("sync", 1)}
