"""failed_jobs rows are never overwritten (finding 10): a payload carrying the uuid of another failed
job, forged and unsigned, is recorded beside it, and the real row keeps the payload queue:retry needs."""
from __future__ import annotations

import json

import pytest

from core.worker import Worker, WorkerOptions
from tests.jobs.sample_jobs import RecordingJob, read_events

REAL = "00000000-0000-4000-8000-00000000f00d"


async def test_a_forged_payload_with_a_failed_jobs_uuid_never_replaces_its_row(store, tmp_path):
    log = str(tmp_path / "events")
    failed = await store.app.queue.failed_store()
    real = json.loads(RecordingJob.make(log=log, value="real").to_payload().encode(store.app.config.app.key))
    real["uuid"] = REAL                     # a failed job with its row (the signature no longer matters here)
    real_raw = json.dumps(real)
    assert await failed.record(store.connection, "default", real_raw, "RuntimeError: the real failure") == REAL
    forged = json.dumps({**real, "uuid": REAL, "data": {"log": log, "value": "forged"}, "signature": None})
    await store.conn.push("default", forged)
    await Worker(store.app, WorkerOptions(stop_when_empty=True, sleep=0.05)).run()
    assert read_events(log) == []           # unsigned: never run
    rows = {row.uuid: row for row in await failed.all()}
    assert rows[REAL].payload == real_raw and rows[REAL].summary == "RuntimeError: the real failure"
    others = [row for uuid, row in rows.items() if uuid != REAL]
    # Recorded under a fresh uuid (unless the store dropped the push of a uuid it remembers as finished).
    assert len(others) <= 1 and all(row.payload == forged and "signature" in row.exception for row in others)


async def test_the_same_failure_recorded_again_is_one_unchanged_row_and_a_different_one_is_kept_apart(store):
    failed = await store.app.queue.failed_store()
    raw = json.dumps({"uuid": REAL, "job": "x.y.Z", "data": {"n": 1}})
    other = json.dumps({"uuid": REAL, "job": "x.y.Z", "data": {"n": 2}})
    assert await failed.record("redis", "q", raw, "first") == REAL
    first = await failed.find(REAL)
    assert await failed.record("redis", "q", raw, "second") == REAL        # the job failed again: one row,
    again = await failed.find(REAL)                                        # written anew (a new row id)
    assert again.exception == "second" and again.row_id != first.row_id
    db = await store.app.queue.database()
    async with db.transaction() as tx:                                     # inside a caller's transaction too
        moved = await failed.record("redis", "q", other, "third", session=tx)
        assert await failed.record("redis", "q", other, "fourth", session=tx) == moved   # its own repeat
    rows = {row.uuid: row for row in await failed.all()}
    assert moved != REAL and set(rows) == {REAL, moved}
    assert (rows[REAL].payload, rows[REAL].exception) == (raw, "second")
    assert (rows[moved].payload, rows[moved].exception) == (other, "fourth")


@pytest.mark.parametrize("store", ["redis"], indirect=True)
async def test_a_job_failing_again_while_queue_retry_pushes_it_back_stays_in_failed_jobs(store):
    """queue:retry on Redis pushes the job back, then forgets its failed row (two stores, no shared
    transaction). A worker that took the job at once and failed it again in between found the old row
    holding the same payload and took it for its own record; the retry then deleted that row: the job
    was in neither the queue nor failed_jobs, and its status was unknown."""
    failed = await store.app.queue.failed_store()
    raw = json.loads(RecordingJob.make(value="again").to_payload().encode(store.app.config.app.key))
    raw["uuid"] = REAL
    raw = json.dumps(raw)
    await failed.record(store.connection, "default", raw, "RuntimeError: first", attempts=1)
    read = await failed.find(REAL)
    forget = failed.forget

    async def a_worker_fails_it_first(job_uuid, session=None, row_id=None):
        job = await store.conn.reserve(["default"])
        assert job is not None and job.payload == raw
        assert await store.conn.fail(job, "RuntimeError: second")
        return await forget(job_uuid, session=session, **({} if row_id is None else {"row_id": row_id}))

    failed.forget = a_worker_fails_it_first
    await store.conn.requeue_failed(failed, read)
    failed.forget = forget
    row = await failed.find(REAL)
    assert row is not None and row.exception == "RuntimeError: second"
    assert (await store.conn.sizes(["default"]))["default"].as_dict()["pending"] == 0
