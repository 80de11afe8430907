"""SPEC 15: core.testing as an application uses it, as a pytest plugin: the queue_fake fixture on a
route handler, the real encoding under the fake, failure messages, run_pushed and run_job."""
from __future__ import annotations

from datetime import datetime

import pytest

from app.controllers.device_controller import DeviceController
from app.jobs.process_data_job import ProcessDataJob
from app.jobs.send_email_job import SendEmailJob
from bootstrap.app import create_app
from core.job import SerializationError
from core.payload import PayloadTooLarge
from core.queue import JobRef
from tests.jobs.status_jobs import AddJob, ChainingJob, IntentJob, UnkeepableResultJob

pytest_plugins = ["core.testing"]     # as an application's test module says it (core.testing is imported below
                                       # inside the tests, so pytest registers the plugin before anything imports it)


async def run_job(*args, **kwargs):
    from core.testing import run_job

    return await run_job(*args, **kwargs)


@pytest.fixture(autouse=True)
async def app(monkeypatch):
    """The application on its SQLite default: what a real dispatch would reach."""
    monkeypatch.setenv("QUEUE_CONNECTION", "database")
    async with create_app() as application:
        yield application


async def queued(app) -> int:
    sizes = await (await app.queue.connection()).sizes()
    return sum(size.pending + size.delayed for size in sizes.values())


async def test_a_route_handler_tested_with_the_queue_fake(queue_fake, app):
    await DeviceController.status(device_id="7", payload={"readings": [21.5, 22.0], "meta": {"fw": "1.2"}})
    queue_fake.assert_pushed(ProcessDataJob, lambda job: job.device_id == "7" and job.readings == [21.5, 22.0])
    queue_fake.assert_pushed_on("data", ProcessDataJob)
    queue_fake.assert_pushed(ProcessDataJob, times=1)
    queue_fake.assert_not_pushed(SendEmailJob)
    assert await queued(app) == 0                     # nothing reached the store


async def test_the_fake_sees_the_job_restored_from_its_payload(queue_fake):
    ref = await AddJob.dispatch(a=(1, 2), b={"k": [1.5]})
    assert isinstance(ref, JobRef)
    [job] = queue_fake.jobs(AddJob)
    assert job is not None and job.job_id == ref and job.a == (1, 2) and job.b == {"k": [1.5]}
    assert job.attempts == 0


async def test_a_value_a_worker_could_not_restore_fails_at_dispatch_under_the_fake(queue_fake):
    with pytest.raises(SerializationError, match="AddJob.a"):
        await AddJob.dispatch(a=datetime(2026, 1, 1), b=1)
    with pytest.raises(PayloadTooLarge):
        await AddJob.dispatch(a="x" * 2_000_000, b=1)
    queue_fake.assert_nothing_pushed()


async def test_a_failing_assertion_lists_what_was_pushed(queue_fake):
    await AddJob.dispatch(a=1, b=2).on_queue("maths")
    with pytest.raises(AssertionError, match=r"expected SendEmailJob to be pushed; pushed: AddJob on database/maths"):
        queue_fake.assert_pushed(SendEmailJob)
    with pytest.raises(AssertionError, match="pushed 2 time"):
        queue_fake.assert_pushed(AddJob, times=2)
    with pytest.raises(AssertionError, match="expected nothing to be pushed; pushed: AddJob"):
        queue_fake.assert_nothing_pushed()
    with pytest.raises(AssertionError, match="on queue 'default'"):
        queue_fake.assert_pushed_on("default", AddJob)


async def test_run_pushed_runs_what_was_pushed_and_what_that_pushes(queue_fake):
    ref = await ChainingJob.dispatch(n=0)
    ran = await queue_fake.run_pushed()
    assert [p.job.n for p in ran] == [0, 1, 2] and [p.state for p in ran] == ["completed"] * 3
    assert await ref.wait(1) == 0
    queue_fake.assert_pushed(ChainingJob, times=3)


async def test_the_fake_answers_status_and_wait_as_a_worker_and_its_store_would(queue_fake):
    """SPEC 15: assertions see the job as a worker would. A result that cannot be kept is completed and
    wait() raises ResultNotSerializable; a job that released itself waits (delayed), in SPEC 11's
    vocabulary; last_error reads `Class: message`; attempts count the run."""
    from core.queue import ResultNotSerializable

    unkeepable = await UnkeepableResultJob.dispatch()
    released = await IntentJob.dispatch(action="release")
    raised = await IntentJob.dispatch(action="raise")
    await queue_fake.run_pushed()
    with pytest.raises(ResultNotSerializable):
        await unkeepable.wait(1)
    status = await released.status()
    assert status.state == "delayed" and status.attempts == 1
    failed = await raised.status()
    assert failed.state == "failed" and failed.last_error == "ValueError: attempt 1 broke"
    assert failed.attempts == 1 and failed.dispatched_at is not None


async def test_under_the_fake_a_delayed_job_is_delayed_and_wait_times_out_with_its_state(queue_fake):
    """As on every store: a job dispatched with a delay reads `delayed` until it runs, and wait() on a
    job no one ran raises WaitTimeout (a TimeoutError) with the last state once its time is up."""
    import time

    from core.queue import WaitTimeout

    later = await AddJob.dispatch(a=1, b=2).delay(60)
    now = await AddJob.dispatch(a=1, b=1)
    assert (await later.status()).state == "delayed" and (await now.status()).state == "pending"
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timed_out:
        await now.wait(0.3)
    assert timed_out.value.state == "pending" and time.monotonic() - started >= 0.3
    await queue_fake.run_pushed()
    assert await later.wait(1) == 3


async def test_after_the_fake_dispatch_reaches_the_real_store_again(app):
    from core.testing import QueueFake

    with QueueFake.install() as fake:
        await AddJob.dispatch(a=1, b=1)
    fake.assert_pushed(AddJob, times=1)
    assert await queued(app) == 0
    await AddJob.dispatch(a=1, b=1)
    assert await queued(app) == 1


@pytest.mark.parametrize(("action", "seen"), [
    ("", {"result": 5}), ("release", {"released": 10.0}), ("delete", {"deleted": True}),
])
async def test_run_job_says_how_the_attempt_ended(action, seen):
    job = IntentJob.make(action=action, value=None if action else 5)
    outcome = await run_job(job, attempts=2)
    expected = {"result": None, "released": None, "deleted": False, **seen}
    assert {"result": outcome.result, "released": outcome.released, "deleted": outcome.deleted} == expected
    assert outcome.failed is None


async def test_run_job_reports_a_failure_and_the_attempt_number():
    failed = await run_job(IntentJob.make(action="fail"))
    assert failed.failed is not None and str(failed.failed) == "the device said no"
    raised = await run_job(IntentJob.make(action="raise"), attempts=2)
    assert raised.failed_with(ValueError) and str(raised.failed) == "attempt 2 broke"


async def test_run_job_restores_the_job_from_its_payload_first():
    with pytest.raises(SerializationError):
        await run_job(IntentJob.make(value=datetime(2026, 1, 1)))
