"""failed_jobs rows are never overwritten (finding 10): a payload carrying the uuid of another failed
job, forged and unsigned, is recorded beside it, and the real row keeps the payload queue:retry needs."""
from __future__ import annotations

import json

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
    assert await failed.record("redis", "q", raw, "second") == REAL        # a repeat: nothing changes
    db = await store.app.queue.database()
    async with db.transaction() as tx:                                     # inside a caller's transaction too
        moved = await failed.record("redis", "q", other, "third", session=tx)
        assert await failed.record("redis", "q", other, "fourth", session=tx) == moved   # its own repeat
    rows = {row.uuid: row for row in await failed.all()}
    assert moved != REAL and set(rows) == {REAL, moved}
    assert (rows[REAL].payload, rows[REAL].exception) == (raw, "first")
    assert (rows[moved].payload, rows[moved].exception) == (other, "third")
