"""core/events.py (SPEC 10): listeners in registration order, each cut at its timeout, never able to
change an outcome; discovery of app/listeners.py at boot; JobQueued after a push is stored."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest

from bootstrap.app import create_app
from core import events
from core.errors import FrameworkError, QueueConnectionError
from core.events import JobEvent, JobFailed, JobQueued, JobReleased, listen
from core.payload import Payload
from tests.conftest import store_env
from tests.jobs.sample_jobs import RecordingJob, read_events


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Each test starts with no listener, discovery done; app/listeners.py is left alone."""
    monkeypatch.setattr(events, "_listeners", {})
    monkeypatch.setattr(events, "_discovered", True)


def failed(job_id: str = "j-1") -> JobFailed:
    return JobFailed(connection="redis", queue="default", job_id=job_id, job_class="app.jobs.x.XJob", attempts=3,
                     exception="ValueError: boom", duration=0.25)


async def test_listeners_run_in_registration_order_and_a_base_class_hears_its_subclasses():
    heard = []

    @listen(JobFailed)
    async def first(event):
        heard.append(("first", event.job_id))

    @listen(JobEvent)
    async def every_job_event(event):
        heard.append(("every", type(event).__name__))

    @listen(JobFailed, JobReleased)
    def plain(event):                         # a plain function works too
        heard.append(("plain", type(event).__name__))

    await events.emit(failed())
    await events.emit(JobQueued(connection="redis", queue="q", job_id="j-2", job_class="a.B", attempts=0))
    assert heard == [("first", "j-1"), ("every", "JobFailed"), ("plain", "JobFailed"), ("every", "JobQueued")]


async def test_a_listener_given_an_event_and_its_base_class_hears_each_event_once():
    heard = []

    @listen(JobFailed, JobEvent)
    def once(event):
        heard.append(type(event).__name__)

    listen(JobFailed)(once)                   # registered again for a class it already hears: still once
    await events.emit(failed())
    await events.emit(JobQueued(connection="redis", queue="q", job_id="j-2", job_class="a.B", attempts=0))
    assert heard == ["JobFailed", "JobQueued"]


async def test_a_listener_that_raises_is_one_log_line_and_the_next_still_runs(caplog):
    heard = []

    @listen(JobFailed)
    async def broken(event):
        raise RuntimeError("pager down\nsecond line")

    @listen(JobFailed)
    async def after(event):
        heard.append(event.job_id)

    with caplog.at_level(logging.WARNING, logger="events"):
        await events.emit(failed())
    assert heard == ["j-1"]
    lines = [r.getMessage() for r in caplog.records if r.name == "events"]
    assert lines == ["listener test_a_listener_that_raises_is_one_log_line_and_the_next_still_runs.<locals>.broken "
                     "of JobFailed raised RuntimeError: pager down"]


@pytest.mark.parametrize("thrown", [SystemExit(3), KeyboardInterrupt(), asyncio.CancelledError()])
async def test_a_listener_raising_a_base_exception_is_one_log_line_too_and_the_caller_goes_on(thrown, caplog):
    """sys.exit() in a listener ended a worker with jobs left reserved, and a CancelledError made an
    awaited dispatch raise although its job was stored: a listener never changes what its caller does."""
    heard = []

    @listen(JobFailed)
    def broken(event):
        raise thrown

    @listen(JobFailed)
    async def after(event):
        heard.append(event.job_id)

    with caplog.at_level(logging.WARNING, logger="events"):
        await events.emit(failed())
    assert heard == ["j-1"]
    lines = [r.getMessage() for r in caplog.records if r.name == "events"]
    assert len(lines) == 1 and f"of JobFailed raised {type(thrown).__name__}" in lines[0]


async def test_cancelling_the_caller_while_a_listener_runs_still_cancels_it():
    started = asyncio.Event()

    @listen(JobFailed)
    async def slow(event):
        started.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(events.emit(failed()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_listener_that_overruns_is_cut_and_logged(monkeypatch, caplog):
    monkeypatch.setattr(events, "LISTENER_TIMEOUT", 0.2)
    heard = []

    @listen(JobFailed)
    async def slow(event):
        await asyncio.sleep(60)
        heard.append("slow finished")

    @listen(JobFailed)
    async def raises_its_own_timeout(event):
        raise TimeoutError("vendor API timed out")

    @listen(JobFailed)
    async def after(event):
        heard.append("after")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="events"):
        await events.emit(failed())
    assert time.monotonic() - started < 30 and heard == ["after"]
    lines = [r.getMessage() for r in caplog.records if r.name == "events"]
    assert len(lines) == 2
    assert lines[0].endswith("slow of JobFailed overran 0.2s and was cut")
    assert lines[1].endswith("raises_its_own_timeout of JobFailed raised TimeoutError: vendor API timed out")


def test_events_are_frozen_and_carry_what_the_spec_lists():
    event = failed()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.attempts = 4
    assert {f.name for f in dataclasses.fields(event)} >= {"connection", "queue", "job_id", "job_class", "attempts",
                                                            "duration", "outcome", "exception"}
    assert event.outcome == "failed"
    names = {"JobQueued", "JobSkipped", "JobProcessing", "JobProcessed", "JobReleased", "JobTimedOut", "JobFailed",
             "JobExpired", "JobRetryRequested", "WorkerStarting", "WorkerStopping", "QueueBusy", "BatchFinished",
             "BatchCancelled", "ScheduledJobDispatched"}
    assert all(issubclass(getattr(events, name), events.Event) for name in names)
    assert {f.name for f in dataclasses.fields(events.JobReleased)} >= {"reason", "delay", "duration"}
    assert "reason" in {f.name for f in dataclasses.fields(events.WorkerStopping)}


def test_wants_says_whether_anyone_listens():
    assert not events.wants(JobFailed)

    @listen(JobFailed)
    async def on_failed(event):
        pass

    assert events.wants(JobFailed) and not events.wants(JobQueued)
    events.forget(on_failed)
    assert not events.wants(JobFailed)


@pytest.mark.parametrize("bad", [RecordingJob, "JobFailed", None])
def test_listen_takes_event_classes_only(bad):
    with pytest.raises(FrameworkError, match="listen\\(\\) takes event classes from core.events"):
        listen(bad)


def write_module(tmp_path, monkeypatch, name: str, text: str) -> str:
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


LISTENERS = """
from core.events import JobQueued, listen
heard = []

@listen(JobQueued)
async def note(event):
    heard.append(event.job_id)
"""


async def test_create_app_discovers_the_listeners_module(tmp_path, monkeypatch):
    name = write_module(tmp_path, monkeypatch, "listeners_boot_sample", LISTENERS)
    monkeypatch.setattr(events, "LISTENERS_MODULE", name)
    monkeypatch.setattr(events, "_discovered", False)
    async with create_app():
        assert events.wants(JobQueued)
        job_id = await RecordingJob.dispatch(log=str(tmp_path / "log"))
    assert __import__(name).heard == [job_id]


async def test_a_lazily_booted_script_discovers_them_at_its_first_dispatch(tmp_path, monkeypatch):
    from core.app import current

    name = write_module(tmp_path, monkeypatch, "listeners_lazy_sample", LISTENERS)
    monkeypatch.setattr(events, "LISTENERS_MODULE", name)
    monkeypatch.setattr(events, "_discovered", False)
    try:
        job_id = await RecordingJob.dispatch(log=str(tmp_path / "log"))    # no create_app: booted lazily
    finally:
        await current().close()
    assert __import__(name).heard == [job_id]


async def test_a_broken_listeners_module_is_one_line_and_pushes_nothing(tmp_path, monkeypatch):
    from core.app import Application, current

    name = write_module(tmp_path, monkeypatch, "listeners_broken_sample", "raise RuntimeError('typo in listeners')\n")
    monkeypatch.setattr(events, "LISTENERS_MODULE", name)
    monkeypatch.setattr(events, "_discovered", False)
    with pytest.raises(FrameworkError) as caught:
        await RecordingJob.dispatch(log="x")      # booted lazily: its first wants() discovers
    await current().close()
    assert str(caught.value) == "Cannot load listeners_broken_sample.py: RuntimeError: typo in listeners"
    with pytest.raises(FrameworkError, match="^Cannot load listeners_broken_sample.py"):
        create_app()                              # and every boot says so until it is fixed
    async with Application() as app:
        sizes = await (await app.queue.connection()).sizes()
    assert sum(s.pending for s in sizes.values()) == 0


# -- JobQueued, on every store -------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "mysql", "pgsql", "redis", "sync"])
def store(request, monkeypatch):
    store_env(request, request.param)
    monkeypatch.setenv("QUEUE_CONNECTION", {"sqlite": "database", "mysql": "database", "pgsql": "database"}.get(
        request.param, request.param))
    return request.param


async def test_job_queued_follows_each_stored_push(store, tmp_path):
    log = str(tmp_path / "events")
    heard = []
    async with create_app() as app:
        conn = await app.queue.connection()

        @listen(JobQueued)
        async def note(event):
            # The push is stored before anyone hears of it (on sync: the job has run).
            sizes = await conn.sizes(["default", "other"]) if hasattr(conn, "sizes") else {}   # sync keeps none
            stored = sum(s.pending + s.delayed for s in sizes.values())
            ran = len(read_events(log))
            heard.append((event, stored, ran))

        first = await RecordingJob.dispatch(log=log, value=1)
        later = await RecordingJob.dispatch(log=log, value=2).delay(30)
        many = await RecordingJob.dispatch_many([{"log": log, "value": 3}, {"log": log, "value": 4}])
        other = await RecordingJob.dispatch(log=log, value=5).on_queue("other")
    name = "database" if store in ("sqlite", "mysql", "pgsql") else store
    assert [e.job_id for e, _, _ in heard] == [first, later, *many, other]
    assert {(e.connection, e.job_class, e.attempts) for e, _, _ in heard} == {
        (name, "tests.jobs.sample_jobs.RecordingJob", 0)}
    assert [e.queue for e, _, _ in heard] == ["default"] * 4 + ["other"]
    assert [e.delay for e, _, _ in heard] == [0, 30, 0, 0, 0]
    if store == "sync":
        assert [ran for _, _, ran in heard] == [1, 2, 4, 4, 5]
    else:
        assert [stored for _, stored, _ in heard] == [1, 2, 4, 4, 5]


async def test_no_job_queued_when_the_push_failed(monkeypatch):
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    monkeypatch.setenv("REDIS_PORT", "1")               # nothing listens there
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "0.2")
    heard = []

    @listen(JobQueued)
    async def note(event):
        heard.append(event)

    async with create_app():
        with pytest.raises(QueueConnectionError):
            await RecordingJob.dispatch(log="x")
    assert heard == []


async def test_a_failing_listener_does_not_fail_the_dispatch(tmp_path):
    @listen(JobQueued)
    async def broken(event):
        raise RuntimeError("listener bug")

    async with create_app() as app:
        job_id = await RecordingJob.dispatch(log=str(tmp_path / "log"))
        reserved = await (await app.queue.connection()).reserve(["default"])
    assert reserved is not None and Payload.decode(reserved.payload).uuid == job_id


async def test_without_a_listener_no_event_is_even_built(monkeypatch, tmp_path):
    def built(**fields):
        raise AssertionError("a JobQueued was built with no listener")

    monkeypatch.setattr("core.dispatch.JobQueued", built)
    async with create_app():
        await RecordingJob.dispatch(log=str(tmp_path / "log"))
        await RecordingJob.dispatch_many([{"log": str(tmp_path / "log")}])


def test_app_listeners_naming_a_missing_module_is_one_line(monkeypatch):
    monkeypatch.setenv("APP_LISTENERS", "tests.no_such_listeners")
    monkeypatch.setattr(events, "_discovered", False)
    with pytest.raises(FrameworkError) as caught:
        create_app()
    assert str(caught.value) == "APP_LISTENERS names tests.no_such_listeners, which cannot be found"


async def test_a_listener_that_forgets_itself_does_not_fail_the_rest_of_a_dispatch_many(tmp_path):
    """emit() for a class nobody listens to any more (the listener forgot itself at the first job) is
    a no-op: it used to raise AttributeError ('tuple' has no copy()) out of dispatch_many after the push."""
    heard = []

    @listen(JobQueued)
    async def once(event):
        heard.append(event.job_id)
        events.forget(once)

    log = str(tmp_path / "log")
    async with create_app() as app:
        ids = await RecordingJob.dispatch_many([{"log": log, "value": 1}, {"log": log, "value": 2}])
        sizes = await (await app.queue.connection()).sizes(["default"])
    assert len(ids) == 2 and heard == ids[:1]
    assert sizes["default"].pending == 2
