"""failed() runs within the attempt's own timeout (issue 11, finding 19); the lost-acknowledgement half is in
tests/faults/test_worker_settle_outages.py."""
from __future__ import annotations

import asyncio
import pytest

from bootstrap.app import create_app
from core.worker import Worker, WorkerOptions
from tests.jobs.sample_jobs import read_events
from tests.jobs.worker_audit_jobs import FailsJob


@pytest.mark.parametrize("how", ["--timeout", "dispatch"])
async def test_failed_is_bounded_by_the_attempts_timeout_not_the_classs(how, tmp_path, caplog):
    """FailsJob's class timeout is 30 s; the attempt's is 0.5 s (--timeout, or set at dispatch): failed() gets 0.5 s."""
    log = str(tmp_path / "events")
    async with create_app() as app:
        extra = {"timeout": 0.5} if how == "dispatch" else {}
        job_id = await FailsJob.dispatch(log=log, failed_seconds=5, **extra)
        options = {"timeout": 0.5} if how == "--timeout" else {}
        await asyncio.wait_for(Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05, **options)).run(), 4)
        [failed] = await (await app.queue.failed_store()).all()
    assert failed.uuid == job_id and failed.summary == "ValueError: fails on attempt 1"
    assert [e["event"] for e in read_events(log)] == ["handle", "failed"]     # cut before its end
    assert f"FailsJob [{job_id}]: failed() exceeded 0.5s" in "\n".join(caplog.messages)
