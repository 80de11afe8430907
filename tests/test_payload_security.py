"""Hostile and broken input, written straight into the real stores as someone with write access would:
each job ends in failed_jobs with one clear line, nothing outside the job packages is imported, and
the worker goes on to run the good job queued behind them (SPEC §2, §8)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bootstrap.app import create_app
from core.errors import InvalidQueueName
from core.job import Job
from core.payload import PayloadTooLarge, check_size, peek_uuid
from tests.conftest import ROOT, run_cli, store_env
from tests.jobs.hostile_jobs import DangerousJob
from tests.jobs.sample_jobs import NotAJob, RecordingJob, read_events
from tests.hostile_support import RawStore, drain

RECORDING = "tests.jobs.sample_jobs.RecordingJob"


@pytest.fixture(params=["sqlite", "mysql", "pgsql", "redis"])
def store(request, monkeypatch):
    """The queue connection under attack; failed_jobs stays in SQLite for Redis, as by default."""
    store_env(request, request.param)
    if request.param == "redis":
        monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    return request.param


def body(marker: str, log: str, **fields) -> dict:
    """A payload that would run RecordingJob (leaving an event) if a field below did not spoil it."""
    value = {"marker": marker, "uuid": marker, "job": RECORDING, "queue": "default", "maxTries": 1,
             "timeout": 5, "retryAfter": [0], "data": {"log": log, "value": marker}}
    for name, field in fields.items():
        if field is DROP:
            del value[name]
        else:
            value[name] = field
    return value


DROP = object()


def broken_payloads(log: str) -> list[tuple[str, str | bytes, str]]:
    """(marker, stored payload, what its failed_jobs exception says)."""
    def js(n, **fields):
        return json.dumps(body(f"case-{n:02d}", log, **fields))

    deep = "[" * 50_000 + "]" * 50_000
    return [
        ("case-00", "case-00 is not JSON", "payload is not valid JSON: Expecting value"),
        ("case-01", js(1)[:70], "payload is not valid JSON"),
        ("case-02", '["case-02"]', "payload is not a JSON object"),
        ("case-03", '"case-03"', "payload is not a JSON object"),
        ("case-04", js(4, uuid=DROP), "payload field 'uuid' is missing"),
        ("case-05", js(5, job=DROP), "payload field 'job' is missing"),
        ("case-06", js(6, maxTries=DROP), "payload field 'maxTries' is missing"),
        ("case-07", js(7, maxTries="3"), "payload field 'maxTries' must be a whole number, got str '3'"),
        ("case-08", js(8, maxTries=True), "payload field 'maxTries' must be a whole number, got bool True"),
        ("case-09", js(9, timeout=float("nan")), "payload field 'timeout' must be a number, got float nan"),
        ("case-10", js(10, timeout=float("inf")), "payload field 'timeout' must be a number, got float inf"),
        ("case-11", js(11, retryAfter=["5"]), "payload field 'retryAfter' must be a number, got str '5'"),
        ("case-12", js(12, data=[["log", log]]), "payload field 'data' must be a JSON object, got list"),
        ("case-13", js(13, uuid=["case-13"]), "payload field 'uuid' must be a string, got list"),
        ("case-14", js(14, uuid="case-14\n2026-01-01 DONE forged line"),
         "payload field 'uuid' must be 1-255 printable characters, got str 'case-14\\n2026"),
        ("case-15", js(15, uuid="u" * 300), "payload field 'uuid' must be 1-255 printable characters"),
        ("case-16", js(16, job=RECORDING + "\x00.x"), "is not a valid class path; it was not imported"),
        ("case-17", js(17, job={"module": "os", "name": "system"}), "payload field 'job' must be a string, got dict"),
        ("case-18", js(18) + "\x00\x00", "payload is not valid JSON: Extra data"),
        ("case-19", '{"marker":"case-19","data":' + deep + "}", "payload is nested too deeply to be read"),
        ("case-20", b'{"marker":"case-20","junk":"\xff\xfe"}', "payload field 'uuid' is missing"),
        ("case-21", b"\xff\xfecase-21 \x00\x01 binary", "payload is not valid JSON"),
    ]


async def test_broken_payloads_in_the_store_end_in_failed_jobs_and_the_worker_goes_on(store, tmp_path, capsys):
    log = str(tmp_path / "events")
    cases = broken_payloads(log)
    async with create_app() as app:
        await app.queue.connection()           # tables exist before the raw writes
        raw = RawStore(store)
        try:
            for _, payload, _ in cases:
                raw.push(payload)
        finally:
            raw.close()
        good = await RecordingJob.dispatch(log=log, value="after")
        await drain(app, concurrency=4)         # batches: one bad job must not take its batch down with it
        failed = await (await app.queue.failed_store()).all()
        sizes = (await (await app.queue.connection()).sizes(["default"]))["default"]
    assert [e["job_id"] for e in read_events(log)] == [good]
    assert sizes.as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert len(failed) == len(cases)
    for marker, _, fragment in cases:
        [row] = [f for f in failed if marker in f.payload]
        assert row.summary.startswith("core.payload.InvalidPayload: ") and fragment in row.summary, \
            (marker, row.summary)
        assert len(row.summary) < 300
    out = capsys.readouterr()
    fails = [line for line in out.out.splitlines() if " FAIL    " in line and "InvalidPayload" in line]
    assert len(fails) == len(cases)
    # A payload that names its class and carries a readable id is logged under that id, as queue:failed
    # lists it (SPEC 5: a job's lines carry its class and id); the others under their row.
    named = [row.uuid for row in failed if peek_uuid(row.payload) == row.uuid and _claims_a_class(row.payload)]
    assert named and all(any(f"[{job_id}]" in line for line in fails) for job_id in named)
    assert "Queue connection error" not in out.out and "Logging error" not in out.err + out.out
    assert "\n2026-01-01 DONE forged line" not in out.out     # the forged id is escaped in the log line


async def test_a_job_whose_payload_was_spoiled_keeps_its_id_in_failed_jobs_and_through_a_retry(store, tmp_path):
    """A payload that is not JSON carries no id of its own: it was recorded under a random one, so the
    id the dispatch returned (and queue:status, queue:retry) found nothing, and a retried one failed
    again under yet another. It is recorded under the id the store knew it by, and keeps it."""
    from core.queue.retry import retry_failed

    log = str(tmp_path / "events")
    async with create_app() as app:
        ref = await RecordingJob.dispatch(log=log, value="spoiled")
        raw = RawStore(store)
        try:
            raw.spoil(ref, "not json {")
        finally:
            raw.close()
        await drain(app)
        failed = await (await app.queue.failed_store()).all()
        assert [row.uuid for row in failed] == [ref]
        assert "payload is not valid JSON" in failed[0].summary
        status = await ref.status()
        assert (status.state, status.attempts) == ("failed", 1)
        assert [job.uuid for job in (await retry_failed(app, [ref])).retried] == [ref]
        await drain(app)
        assert [row.uuid for row in await (await app.queue.failed_store()).all()] == [ref]
    assert read_events(log) == []


@pytest.mark.parametrize("kind", ["sqlite", "pgsql"])
async def test_a_spoiled_row_with_no_uuid_is_failed_under_the_id_its_event_gives(kind, request, monkeypatch,
                                                                                 tmp_path):
    """A jobs row with no uuid (written by hand, or by an earlier release) and a payload that is not
    JSON was recorded under a random uuid while its JobFailed event named the row: a listener could not
    find the row, and queue:retry with the id the event and the log gave found nothing."""
    from core import events
    from core.events import JobFailed, listen

    store_env(request, kind)
    monkeypatch.setenv("QUEUE_CONNECTION", "database")
    monkeypatch.setattr(events, "_listeners", {})
    monkeypatch.setattr(events, "_discovered", True)
    heard: list[str] = []
    listen(JobFailed)(lambda event: heard.append(event.job_id))
    async with create_app() as app:
        ref = await RecordingJob.dispatch(log=str(tmp_path / "events"), value="spoiled")
        db = await app.queue.database()
        await db.execute("UPDATE jobs SET uuid = NULL, payload = ? WHERE uuid = ?", ("not json {", str(ref)))
        await drain(app)
        failed = await (await app.queue.failed_store()).all()
        assert len(heard) == 1 and [row.uuid for row in failed] == heard
        status = await (await app.queue.connection()).job_status(None, heard[0])
        assert status is not None and status.state == "failed"


async def test_redis_ids_and_payloads_that_are_not_utf8_do_not_jam_a_batch(redis_env, monkeypatch, tmp_path):
    """The reserve reply could not be decoded: those jobs and the good ones of the same batch sat reserved."""
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    log = str(tmp_path / "events")
    async with create_app() as app:
        raw = RawStore("redis")
        raw.push(b'{"uuid":"x\xff","job":"os.system"}', job_id="payload-not-utf8")
        raw.push(b"not json", job_id=b"id-not-utf8-\xff\xfe")
        raw.close()
        good = [await RecordingJob.dispatch(log=log, value=n) for n in range(3)]
        await drain(app, concurrency=8)
        failed = await (await app.queue.failed_store()).all()
        conn = await app.queue.connection()
        assert (await conn.sizes(["default"]))["default"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
        assert await conn.client.hlen("queues:{default}:jobs") == 0
    assert sorted(e["job_id"] for e in read_events(log)) == sorted(good)
    assert sorted(f.summary.split(": ", 1)[1][:40] for f in failed) == [
        "payload field 'uuid' must be 1-255 print", "payload is not valid JSON: Expecting val"]
    assert "\ufffd" in [f for f in failed if "uuid" in f.summary][0].payload   # stored readable, not lost


# -- class paths -------------------------------------------------------------------------------------

OUTSIDE = [
    ("os.system", "outside the job packages"),
    ("builtins.eval", "outside the job packages"),
    ("subprocess.Popen", "outside the job packages"),
    ("app.jobs_evil.payload.EvilJob", "outside the job packages"),
    ("tests.jobs_evil.payload.EvilJob", "outside the job packages"),      # exists, and would leave a trace
    ("tests.jobs_evil.EvilJob", "outside the job packages"),
    ("tests.outside_job.OutsideJob", "outside the job packages"),         # a real Job subclass, elsewhere
    ("tests.jobs.hostile_jobs.OutsideJob", "not a Job subclass defined there"),   # ... imported into a job module
    ("tests.jobs.hostile_jobs.AliasJob", "not a Job subclass defined there"),     # a second name for RecordingJob
    ("tests.jobs.hostile_jobs.Job", "not a Job subclass defined there"),          # the base class itself
    ("tests.jobs.sample_jobs.NotAJob", "not a Job subclass defined there"),
    ("tests.jobs.sample_jobs.record", "not a Job subclass defined there"),        # a function
    ("tests.jobs.sample_jobs.os", "not a Job subclass defined there"),            # a module attribute
    ("tests.jobs.sample_jobs.RecordingJob.handle", "cannot be imported"),          # walking through attributes
    ("tests.jobs.sample_jobs.os.system", "cannot be imported"),
    ("tests.jobs.sample_jobs.RecordingJob.__init__.__globals__", "not a valid class path"),
    ("tests.jobs.__init__.RecordingJob", "not a valid class path"),
    ("tests.jobs.sample_jobs.__builtins__", "not a valid class path"),
    ("__main__.RecordingJob", "not a valid class path"),
    (".tests.jobs.sample_jobs.RecordingJob", "not a valid class path"),
    ("tests.jobs..sample_jobs.RecordingJob", "not a valid class path"),
    ("tests/jobs/sample_jobs.RecordingJob", "not a valid class path"),
    ("tests.jobs.sample_jobs.RecordingJob ", "not a valid class path"),
    ("__import__('os').system('id')", "not a valid class path"),
    ("RecordingJob", "not a valid class path"),
    ("tests.jobs.gone_module.GoneJob", "cannot be imported"),
]


def test_the_import_trace_of_tests_jobs_evil_works(tmp_path):
    """The detector the next test relies on: importing the package does leave its trace."""
    marker = tmp_path / "marker"
    subprocess.run([sys.executable, "-c", "import tests.jobs_evil.payload"], cwd=ROOT, check=True,
                   env={**os.environ, "TESTS_JOBS_EVIL_MARKER": str(marker)})
    assert marker.read_text().startswith("imported in pid")


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
async def test_class_paths_outside_the_job_packages_are_recorded_and_never_imported(store, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("TESTS_JOBS_EVIL_MARKER", str(marker))
    monkeypatch.delenv("TESTS_JOBS_EVIL_IMPORTED", raising=False)
    log = str(tmp_path / "events")
    DangerousJob.instances = 0
    async with create_app() as app:
        await app.queue.connection()
        raw = RawStore(store)
        for n, (path, _) in enumerate(OUTSIDE):
            raw.push(json.dumps(body(f"class-{n:02d}", log, job=path)))
        raw.close()
        good = await RecordingJob.dispatch(log=log, value="after")
        await drain(app, concurrency=4)
        failed = {f.uuid: f for f in await (await app.queue.failed_store()).all()}
    assert [e["job_id"] for e in read_events(log)] == [good]    # nothing named above ran, in any form
    assert len(failed) == len(OUTSIDE)
    for n, (path, fragment) in enumerate(OUTSIDE):
        summary = failed[f"class-{n:02d}"].summary
        assert summary.startswith("core.payload.InvalidPayload: ") and fragment in summary, (path, summary)
    assert "tests.jobs_evil" not in sys.modules and "tests.jobs_evil.payload" not in sys.modules
    assert "TESTS_JOBS_EVIL_IMPORTED" not in os.environ and not marker.exists()
    assert not NotAJob.instantiated and DangerousJob.instances == 0


# -- oversized payloads ------------------------------------------------------------------------------

def test_the_size_check_is_bytes_against_the_limit():
    check_size("x" * 10, 10, "SomeJob")
    check_size("x" * 10**7, 0, "SomeJob")                        # 0: no limit
    with pytest.raises(PayloadTooLarge) as err:
        check_size("x" * 11, 10, "SomeJob")
    assert str(err.value) == "SomeJob payload is 11 bytes, over QUEUE_MAX_PAYLOAD_BYTES (10); nothing was pushed"


@pytest.mark.parametrize("store", ["sqlite", "redis"], indirect=True)
async def test_an_oversized_job_is_refused_at_dispatch_and_nothing_of_its_batch_is_pushed(store, tmp_path, monkeypatch):
    log = str(tmp_path / "events")
    async with create_app() as app:            # the default limit: 1 MiB
        conn = await app.queue.connection()
        with pytest.raises(PayloadTooLarge) as err:
            await RecordingJob.dispatch(log=log, value="é" * (1024 * 1024 // 6))   # JSON escapes é: 6 bytes each
        assert str(err.value).startswith("RecordingJob payload is 1,048,")
        assert str(err.value).endswith(" bytes, over QUEUE_MAX_PAYLOAD_BYTES (1,048,576); nothing was pushed")
        with pytest.raises(PayloadTooLarge):
            await RecordingJob.dispatch_many([{"log": log, "value": 1}, {"log": log, "value": "x" * 2**20},
                                              {"log": log, "value": 3}])
        assert (await conn.sizes(["default"]))["default"].pending == 0
        await RecordingJob.dispatch(log=log, value="x" * 1_000_000)   # under the limit: fine
        assert (await conn.sizes(["default"]))["default"].pending == 1
    monkeypatch.setenv("QUEUE_MAX_PAYLOAD_BYTES", "500")
    async with create_app() as app:
        with pytest.raises(PayloadTooLarge, match=r"over QUEUE_MAX_PAYLOAD_BYTES \(500\)"):
            await RecordingJob.dispatch(log=log, value="x" * 500)


async def test_a_worker_fails_an_oversized_stored_payload_without_decoding_it(store, tmp_path):
    log = str(tmp_path / "events")
    async with create_app() as app:
        await app.queue.connection()
        big = json.dumps(body("too-big", log, data={"log": log, "value": "x" * (2 * 2**20)}))
        raw = RawStore(store)
        raw.push(big)
        raw.close()
        good = await RecordingJob.dispatch(log=log, value="after")
        await drain(app)
        [failed] = await (await app.queue.failed_store()).all()
    assert [e["job_id"] for e in read_events(log)] == [good]      # decoded, it would have run and recorded
    assert failed.uuid == "too-big" and len(failed.payload) == len(big)   # kept whole
    assert failed.summary == (f"core.payload.InvalidPayload: payload is {len(big):,} bytes, over "
                              f"QUEUE_MAX_PAYLOAD_BYTES (1,048,576); it was not decoded")


def test_a_bad_payload_limit_setting_is_one_line():
    result = run_cli("queue:size", env={"QUEUE_MAX_PAYLOAD_BYTES": "1MB"})
    assert result.returncode == 1
    assert result.stderr.strip() == "QUEUE_MAX_PAYLOAD_BYTES must be a whole number, got '1MB'"


# -- queue names -------------------------------------------------------------------------------------

BAD_QUEUES = ["has space", "semi;colon", "x" * 101, "tab\there", "é", "{curly}", "*", ""]


class BadQueueJob(Job):
    queue = "emails; DROP TABLE jobs"

    async def handle(self) -> None: ...


async def test_bad_queue_names_are_refused_at_every_dispatch_path(tmp_path):
    async with create_app() as app:
        with pytest.raises(InvalidQueueName, match=r"invalid queue name 'emails; DROP TABLE jobs'"):
            await BadQueueJob.dispatch()
        for name in BAD_QUEUES:
            with pytest.raises(InvalidQueueName, match="use 1-100 letters, digits"):
                await RecordingJob.dispatch(log="x").on_queue(name)
            with pytest.raises(InvalidQueueName):
                await RecordingJob.dispatch_many([{"log": "x"}], queue=name)
        await RecordingJob.dispatch(log="x").on_queue("tenant-1:emails.v2_" + "x" * 81)   # 100 characters
        conn = await app.queue.connection()
        sizes = await conn.sizes()
    assert {q: s.pending for q, s in sizes.items()} == {"tenant-1:emails.v2_" + "x" * 81: 1}


@pytest.mark.parametrize("command", ["queue:work", "queue:size", "queue:clear"])
@pytest.mark.parametrize("name", ["bad name;drop", ","])
def test_bad_queue_names_on_the_command_line_are_one_line(command, name):
    result = run_cli(command, "--queue", name, "--stop-when-empty") if command == "queue:work" \
        else run_cli(command, "--queue", name)
    assert result.returncode == 1, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("invalid queue name ") and "use 1-100 letters, digits" in result.stderr


async def test_queue_failed_lists_hostile_failed_jobs_printably(tmp_path):
    """One unreadable row used to stop `queue:failed` (RecursionError); a forged class name could carry
    terminal escape codes and newlines into the table."""
    log = str(tmp_path / "events")
    async with create_app() as app:
        await app.queue.connection()
        raw = RawStore("sqlite")
        raw.push('{"marker":"deep","data":' + "[" * 50_000 + "]" * 50_000 + "}")
        raw.push(json.dumps(body("escapes", log, job="evil\x1b[2J\x1b[31mRED\nDONE forged", maxTries="1")))
        raw.close()
        await drain(app)
    table = run_cli("queue:failed", check=True).stdout
    listed = json.loads(run_cli("queue:failed", "--json", check=True).stdout)
    assert len(table.splitlines()) == 4 and all(line.isprintable() for line in table.splitlines())
    assert sorted(j["job"] for j in listed) == ["?", "evil\\x1b[2J\\x1b[31mRED\\nDONE forged"]


def _claims_a_class(raw: str) -> bool:
    try:
        body = json.loads(raw)
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("job"), str) and bool(body["job"].strip())
