"""The worker against a store that goes away while it settles a job (issue 11, findings 7, 8, 9, 19).

Through tests/faults/proxy.py, as tests/faults/test_worker_outages.py does: the real servers stay up.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

import core.worker
from bootstrap.app import create_app
from core.worker import Worker, WorkerOptions
from tests.faults.conftest import eventually
from tests.jobs.sample_jobs import read_events
from tests.jobs.worker_audit_jobs import SucceedsJob

pytestmark = pytest.mark.slow


async def test_an_acknowledgement_that_gave_up_is_not_logged_as_done(redis_proxy, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    monkeypatch.setattr(core.worker, "SETTLE_TRIES", 2)
    log = str(tmp_path / "events")
    with caplog.at_level(logging.INFO):
        async with create_app() as app:
            job_id = await SucceedsJob.dispatch(log=log, seconds=0.5)
            worker = Worker(app, WorkerOptions(sleep=0.05))
            task = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: read_events(log), 10, "the job to start")
                redis_proxy.cut()                     # handle() returns into an outage longer than the visibility timeout
                gave_up = "the acknowledgement could not be stored"
                await eventually(lambda: gave_up in "\n".join(caplog.messages), 15, "the worker to give up")
            finally:
                worker.stop("test over")
                redis_proxy.restore()
                await asyncio.wait_for(task, 30)
    lines = [m for m in caplog.messages if job_id in m]
    assert [m for m in lines if m.startswith("DONE")] == [], lines
    assert f"SucceedsJob [{job_id}]: handle() returned, but the acknowledgement could not be stored; it runs again " \
           f"after the visibility timeout" in lines
