"""self.release(), self.delete(), self.fail() and middleware intents (SPEC 9): recorded, first one wins."""
from __future__ import annotations

import pytest

from core.job import Intent, Job, ManuallyFailed, SerializationError, intend, intent_of


class VendorJob(Job):
    def __init__(self) -> None:
        super().__init__()
        self.device_id = 7

    async def handle(self) -> None:
        return self.release(30)


async def test_release_from_handle_is_recorded_and_handle_returns_nothing():
    job = VendorJob()
    assert intent_of(job) is None
    assert await job.run_handle() is None
    assert intent_of(job) == Intent("release", 30.0, None, "job")


def test_delete_and_fail_are_recorded():
    deleted, failed, reason = VendorJob(), VendorJob(), ValueError("bad reading")
    deleted.delete()
    failed.fail(reason)
    assert intent_of(deleted) == Intent("delete", 0.0, None, "job")
    assert intent_of(failed) == Intent("fail", 0.0, reason, "job")


def test_fail_without_an_exception_records_a_manual_failure():
    bare, said = VendorJob(), VendorJob()
    bare.fail()
    said.fail("vendor refused the device")
    assert isinstance(intent_of(bare).exception, ManuallyFailed)
    assert "VendorJob was failed by its job" in str(intent_of(bare).exception)
    assert str(intent_of(said).exception) == "vendor refused the device"


@pytest.mark.parametrize("second", ["release", "delete", "fail"])
def test_the_first_call_wins_and_a_second_raises(second):
    job = VendorJob()
    job.delete()
    with pytest.raises(RuntimeError, match="VendorJob already chose to delete .by job.; only the first"):
        getattr(job, second)()
    assert intent_of(job).kind == "delete"


def test_a_middleware_records_through_intend_and_the_job_cannot_override_it():
    job = VendorJob()
    intend(job, "release", delay=2.5, by="middleware")
    with pytest.raises(RuntimeError, match="already chose to release .by middleware."):
        job.fail()
    assert intent_of(job) == Intent("release", 2.5, None, "middleware")


def test_a_retry_hint_gives_way_to_any_decision():
    job, boom = VendorJob(), RuntimeError("vendor down")
    intend(job, "retry", delay=5, exception=boom)
    intend(job, "fail", exception=boom)
    assert intent_of(job) == Intent("fail", 0.0, boom, "middleware")


@pytest.mark.parametrize("delay", [-1, float("nan"), float("inf"), "30", True, 10 ** 12])
def test_a_bad_release_delay_is_one_clear_error(delay):
    job = VendorJob()
    with pytest.raises(ValueError, match="VendorJob.release.. delay must be a finite number of seconds"):
        job.release(delay)
    assert intent_of(job) is None


def test_release_takes_a_timedelta_or_a_datetime_as_delay_does():
    from datetime import datetime, timedelta

    by_timedelta, by_datetime = VendorJob(), VendorJob()
    by_timedelta.release(timedelta(minutes=2))
    assert intent_of(by_timedelta) == Intent("release", 120.0, None, "job")
    by_datetime.release(datetime.now() + timedelta(seconds=60))
    assert 58 <= intent_of(by_datetime).delay <= 60


def test_fail_takes_an_exception_or_a_message_only():
    with pytest.raises(TypeError, match="takes an exception or a message"):
        VendorJob().fail(42)


def test_intents_never_travel_in_the_payload_and_the_names_cannot_be_shadowed():
    job = VendorJob()
    job.release(5)
    assert job.serialize() == {"device_id": 7}
    with pytest.raises(SerializationError, match="'delete' cannot be set at dispatch"):
        VendorJob.make(delete=True)
