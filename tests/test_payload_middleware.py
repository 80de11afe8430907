"""Middleware given to `.through()` travels in the payload as its class path and public attributes,
and a worker rebuilds it only from core.queue.middleware or the job packages (SPEC 8, 9)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from bootstrap.app import create_app
from core.errors import FrameworkError
from core.job import SerializationError
from core.payload import InvalidPayload, Payload, restore_middleware
from tests.conftest import ROOT
from tests.jobs.middleware_jobs import SlottedTag, Tag
from tests.jobs.sample_jobs import RecordingJob

PACKAGES = ("app.jobs", "tests.jobs")


async def pushed_payload(app, pending) -> Payload:
    await pending
    conn = await app.queue.connection()
    reserved = await conn.reserve(["default"])
    return Payload.decode(reserved.payload, app.config.app.key)


async def test_through_middleware_travels_and_is_rebuilt_without_its_init(monkeypatch):
    monkeypatch.setenv("APP_KEY", "k")
    async with create_app() as app:
        payload = await pushed_payload(app, RecordingJob.dispatch(log="x").through(
            [Tag("outer", "a.log", extra={"n": (1, 2)}), Tag("inner")]))
        assert payload.middleware == (("tests.jobs.middleware_jobs.Tag", {"label": "outer", "log": "a.log",
                                                                           "extra": {"n": {"__tuple__": [1, 2]}}}),
                                      ("tests.jobs.middleware_jobs.Tag", {"label": "inner", "log": "", "extra": None}))
        inits = Tag.inits
        outer, inner = restore_middleware(payload, app.config.app.job_packages)
    assert Tag.inits == inits                       # made without __init__: nothing of the payload is called
    assert type(outer) is Tag and (outer.label, outer.log, outer.extra) == ("outer", "a.log", {"n": (1, 2)})
    assert inner.label == "inner" and not hasattr(inner, "_seen") and inner.describe() == "inner"


async def test_without_through_there_is_no_middleware_option():
    async with create_app() as app:
        payload = await pushed_payload(app, RecordingJob.dispatch(log="x"))
    assert payload.middleware == () and "middleware" not in payload.options
    assert restore_middleware(payload, PACKAGES) == []


class LocalMiddleware:
    async def __call__(self, job, next):
        return await next(job)


async def plain_function(job, next):
    return await next(job)


@pytest.mark.parametrize("middleware, fragment", [
    (plain_function, "builtins.function cannot travel in a payload"),
    (LocalMiddleware(), f"{__name__}.LocalMiddleware cannot travel in a payload: only instances of classes "
                        "defined at the top of a module under core.queue.middleware, app.jobs, tests.jobs can"),
    (Tag, "is not a middleware object"),
    (object(), "is not a middleware object"),
    (RecordingJob(), "is not a middleware object"),
    (Tag("x", extra=socket.socket), "Tag.extra cannot be serialized"),
    (Tag("x", extra={1: "a"}), "Tag.extra cannot be serialized: extra has a key of type int"),
    (SlottedTag("x"), "keeps no attributes dict"),
])
async def test_middleware_that_cannot_travel_is_refused_at_dispatch(middleware, fragment):
    async with create_app() as app:
        with pytest.raises(SerializationError) as caught:
            await RecordingJob.dispatch(log="x").through([Tag("fine"), middleware])
        assert str(caught.value).startswith("RecordingJob.through(): ") and fragment in str(caught.value)
        sizes = await (await app.queue.connection()).sizes()
        assert sum(s.pending for s in sizes.values()) == 0


def forged(*middleware: list) -> Payload:
    return Payload(uuid="u-1", job="tests.jobs.sample_jobs.RecordingJob", queue="default", max_tries=1,
                   timeout=5.0, retry_after=(0.0,), options={"middleware": list(middleware)})


@pytest.mark.parametrize("spec, fragment", [
    (["tests.jobs_evil.payload.EvilJob", {}], "middleware class tests.jobs_evil.payload.EvilJob is outside the "
                                              "middleware packages (core.queue.middleware, app.jobs, tests.jobs)"),
    (["os.system", {}], "middleware class os.system is outside the middleware packages"),
    (["builtins.eval", {}], "outside the middleware packages"),
    (["tests.jobs.__init__.x", {}], "is not a valid class path"),
    (["tests.jobs.sample_jobs.record", {}], "tests.jobs.sample_jobs.record is not a middleware class defined there"),
    (["tests.jobs.sample_jobs.record.__globals__", {}], "is not a valid class path"),
    (["tests.jobs.middleware_jobs.SettingsJob", {}], "SettingsJob is not a middleware class defined there"),
    (["tests.jobs.middleware_jobs.NotMiddleware", {}], "is not a middleware (it has neither __call__ nor handle)"),
    (["tests.jobs.middleware_jobs.Exponential", {}], "is not a middleware class defined there"),   # imported there
    (["tests.jobs.gone.Tag", {}], "middleware module tests.jobs.gone cannot be imported"),
    (["tests.jobs.middleware_jobs.Tag", {"describe": "x"}], "middleware attribute 'describe' of "
                                                            "tests.jobs.middleware_jobs.Tag cannot be restored"),
    (["tests.jobs.middleware_jobs.Tag", {"_seen": []}], "middleware attribute '_seen'"),
    (["tests.jobs.middleware_jobs.SlottedTag", {"label": "x"}], "SlottedTag cannot be restored"),
])
def test_a_forged_middleware_is_refused_by_the_worker(spec, fragment):
    with pytest.raises(InvalidPayload) as caught:
        restore_middleware(Payload.decode(forged(["tests.jobs.middleware_jobs.Tag", {"label": "ok"}], spec).encode()),
                           PACKAGES)
    assert fragment in str(caught.value)


def test_a_forged_middleware_path_is_never_imported(tmp_path):
    """In a fresh process, with the import trace of tests.jobs_evil armed."""
    marker = tmp_path / "marker"
    raw = forged(["tests.jobs_evil.payload.EvilJob", {}]).encode("k")
    code = ("import sys; from core.payload import Payload, InvalidPayload, restore_middleware\n"
            "p = Payload.decode(sys.stdin.read(), 'k')\n"
            "try:\n    restore_middleware(p, ('app.jobs', 'tests.jobs'))\n"
            "except InvalidPayload as exc:\n    print('refused:', exc)\n"
            "print('imported' if 'tests.jobs_evil' in sys.modules else 'not imported')")
    out = subprocess.run([sys.executable, "-c", code], input=raw, cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "TESTS_JOBS_EVIL_MARKER": str(marker)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "not imported" and "refused: middleware class" in out.stdout
    assert not marker.exists()


def test_the_middleware_option_is_signed():
    raw = forged(["tests.jobs.middleware_jobs.Tag", {"label": "ok"}]).encode("k")
    swapped = raw.replace('"label":"ok"', '"label":"evil"')
    with pytest.raises(InvalidPayload, match="signature is invalid"):
        Payload.decode(swapped, "k")
    assert json.loads(raw)["options"]["middleware"] == [["tests.jobs.middleware_jobs.Tag", {"label": "ok"}]]


def test_through_takes_a_list():
    pending = RecordingJob.dispatch(log="x")
    pending._awaited = True                     # never pushed, on purpose: no "never awaited" warning
    with pytest.raises(FrameworkError, match="^through\\(\\) takes a list of middleware, got Tag$"):
        pending.through(Tag("x"))


@pytest.mark.parametrize("error, tries", [("LookupError", 1), ("KeyError", 1), ("ValueError", 3)])
async def test_fail_on_exception_given_to_through_fails_at_once_on_its_classes_and_their_subclasses(error, tries,
                                                                                                     tmp_path):
    """SPEC 9: middleware per dispatch too. FailOnException kept its exception classes as classes, which
    no payload can hold: `.through([FailOnException([...])])` was refused at dispatch."""
    from core.queue.middleware import FailOnException
    from core.worker import Worker, WorkerOptions
    from tests.jobs.control_jobs import RaisingJob
    from tests.jobs.sample_jobs import read_events

    log = str(tmp_path / "events")
    async with create_app() as app:
        await RaisingJob.dispatch(log=log, error=error).through([FailOnException([LookupError])])
        await Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05)).run()
        failed = await (await app.queue.failed_store()).all()
    events = read_events(log)
    assert [e["event"] for e in events] == ["handle"] * tries + ["failed"]
    assert events[-1]["exception"] == error and len(failed) == 1
