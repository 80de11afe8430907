"""core/worker/limits.py in process (SPEC 9): tries used = attempts - releases, what bounds them
(max_tries, or with retry_until max_exceptions), and the refusals judged at reservation on the store's
clock: TooManyReleases, RetryDeadlinePassed, JobExpired (or a quiet SKIP). No store, no worker."""
from __future__ import annotations

import pytest

from core.queue.contract import ReservedJob
from core.worker import JobExpired, RetryDeadlinePassed, TooManyReleases
from core.worker.limits import Tries, refusal, tries
from core.worker.outcome import Delete, Fail
from tests.jobs.sample_jobs import RecordingJob

PUSHED = 1_700_000_000.0     # a push time on the store's clock


def reserved(attempts: int = 1, releases: int = 0, now: float = PUSHED, due_at: float = PUSHED,
             pushed_at: float = PUSHED) -> ReservedJob:
    return ReservedJob("7", "default", "{}", attempts, "token", releases=releases, pushed_at=pushed_at,
                       due_at=due_at, now=now)


def payload(**settings):
    return RecordingJob.make(**settings).to_payload()


def failure(outcome) -> tuple[type, str]:
    assert isinstance(outcome, Fail), outcome
    return type(outcome.exception), str(outcome.exception)


# -- tries ---------------------------------------------------------------------------------------

def test_tries_used_are_attempts_less_releases_and_max_tries_bounds_them():
    assert tries(reserved(attempts=7, releases=5), payload(), 3) == Tries(2, 3)
    assert tries(reserved(attempts=1), payload(), 5) == Tries(1, 5)     # the worker's --tries, when given


@pytest.mark.parametrize("settings, limit", [
    ({"retry_until": 60}, None),                           # only the deadline bounds them
    ({"retry_until": 60, "max_exceptions": 4}, 4),
    ({"max_exceptions": 4}, 3),                            # without retry_until, the lower of the two
    ({"max_exceptions": 2}, 2),                            # (max_tries=5 with max_exceptions=2 ran 5 tries)
])
def test_with_retry_until_max_exceptions_bounds_the_tries_instead_of_max_tries(settings, limit):
    assert tries(reserved(attempts=9, releases=2), payload(**settings), 3) == Tries(7, limit)


def test_a_try_is_left_below_the_limit_and_over_it_only_when_an_attempt_never_finished():
    assert Tries(2, 3).left and not Tries(2, 3).over
    assert not Tries(3, 3).left and not Tries(3, 3).over     # the last try: its failure fails the job
    assert not Tries(4, 3).left and Tries(4, 3).over         # a worker died in the last one
    assert Tries(500, None).left and not Tries(500, None).over


def test_the_running_line_names_the_attempt_and_with_releases_or_a_deadline_the_try():
    assert Tries(3, 3).describe(reserved(attempts=3)) == "attempt 3/3"
    assert Tries(2, 3).describe(reserved(attempts=7, releases=5)) == "attempt 7 (try 2/3, 5 releases)"
    assert Tries(4, None).describe(reserved(attempts=4)) == "attempt 4 (try 4 until retry_until, 0 releases)"


# -- refusals ------------------------------------------------------------------------------------

def test_a_job_within_its_limits_is_not_refused():
    job = payload(retry_until=10, expires_after=10, max_releases=3)
    assert refusal(reserved(attempts=4, releases=3, now=PUSHED + 10), job) is None


def test_a_job_released_more_often_than_max_releases_fails_with_too_many_releases():
    assert refusal(reserved(attempts=101, releases=100), payload()) is None      # the default, 100, is allowed
    kind, message = failure(refusal(reserved(attempts=102, releases=101), payload()))
    assert kind is TooManyReleases and "released 101 times, over its max_releases of 100" in message
    kind, _ = failure(refusal(reserved(attempts=2, releases=1), payload(max_releases=0)))
    assert kind is TooManyReleases


def test_a_job_reserved_past_retry_until_fails_with_retry_deadline_passed_whatever_its_tries():
    job = payload(retry_until=10)
    assert refusal(reserved(attempts=50, now=PUSHED + 10), job) is None           # at the deadline: still in time
    kind, message = failure(refusal(reserved(attempts=2, now=PUSHED + 10.5), job))
    assert kind is RetryDeadlinePassed
    assert "reserved 10.5s after it was due, past its retry_until of 10s; it was not run again" in message
    # Releases are bounded by it too: a job only ever released is refused past it.
    kind, _ = failure(refusal(reserved(attempts=6, releases=5, now=PUSHED + 11), job))
    assert kind is RetryDeadlinePassed


def test_retry_until_counts_from_when_a_delayed_job_came_due():
    """SPEC 9: measured from the push plus its delay. A job dispatched with .delay(30) and retry_until
    10 runs at 35 s after its push; it is past its deadline only 10 s after it came due."""
    job = payload(retry_until=10)
    due = PUSHED + 30
    assert refusal(reserved(now=due + 5, due_at=due), job) is None
    assert refusal(reserved(attempts=3, now=due + 10, due_at=due), job) is None
    kind, message = failure(refusal(reserved(attempts=3, now=due + 12, due_at=due), job))
    assert kind is RetryDeadlinePassed and "reserved 12.0s after it was due" in message


async def test_a_datetime_retry_until_stays_that_moment_when_the_dispatch_is_delayed():
    from datetime import datetime, timedelta

    from core.job_settings import InvalidJobSetting
    from core.options import RETRY_UNTIL

    job = RecordingJob.make(retry_until=datetime.now() + timedelta(seconds=100))
    assert 99 <= job.to_payload(delay=30).options[RETRY_UNTIL] + 30 <= 100      # from the due time, 30 s on
    with pytest.raises(InvalidJobSetting, match="retry_until must be after the job is due"):
        job.to_payload(delay=200)


def test_a_job_not_started_within_expires_after_of_being_due_expires():
    job = payload(expires_after=5)
    delayed = PUSHED + 30                                    # dispatched with .delay(30): judged from then
    assert refusal(reserved(now=delayed + 5, due_at=delayed), job) is None
    kind, message = failure(refusal(reserved(now=delayed + 6, due_at=delayed), job))
    assert kind is JobExpired and message.endswith("not started within 5s of being due (reserved 6.0s after); "
                                                   "it was not run")
    quiet = refusal(reserved(now=delayed + 6, due_at=delayed), payload(expires_after=5, expires_quietly=True))
    assert quiet == Delete("expired")


def test_expiry_is_judged_until_the_first_failed_try_and_releases_do_not_end_it():
    job = payload(expires_after=5)
    late = PUSHED + 60
    kind, message = failure(refusal(reserved(attempts=4, releases=3, now=late), job))    # held back by releases
    assert kind is JobExpired and message.endswith("it was not run again")   # a release() from handle() ran it
    assert refusal(reserved(attempts=2, now=late), job) is None                   # it started: never cut short
    assert refusal(reserved(attempts=5, releases=3, now=late), job) is None


def test_a_job_stored_without_a_push_time_is_judged_by_its_releases_only():
    job = payload(retry_until=1, expires_after=1, max_releases=2)
    assert refusal(reserved(attempts=3, releases=2, pushed_at=0, due_at=0, now=PUSHED), job) is None
    kind, _ = failure(refusal(reserved(attempts=4, releases=3, pushed_at=0, due_at=0, now=PUSHED), job))
    assert kind is TooManyReleases
