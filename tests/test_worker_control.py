"""SPEC 9 through `python main.py queue:work` processes on SQLite, MySQL and Redis, continued from
test_worker_middleware.py: retry_until and queue:retry, max_exceptions, ThrottlesExceptions (per class,
`.by(key)`, backoff), an exception raised after release(), Skip and FailOnException.

Times compared are read from the queue store's own clock (the one deadlines, circuits and release
delays are timed on); the bounds asserted follow from the jobs' settings, not from how fast it ran.
"""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.conftest import run_cli
from tests.jobs.limit_jobs import (BackoffJob, DeadlineJob, ExceptionsJob, FailOnJob, OneTryReleaseThenRaiseJob,
                                   ReleaseThenRaiseJob, SkipJob, ThrottledJob)
from tests.worker_support import EPSILON, empty, events, failed_rows, log_lines, stop, until

pytestmark = pytest.mark.slow


def handles_of(log, job_id: str) -> list[dict]:
    return [e for e in events(log, "handle") if e["job_id"] == job_id]


def failures_of(log, job_id: str) -> list[str]:
    return [e["exception"] for e in events(log, "failed") if e["job_id"] == job_id]


# -- retry_until -------------------------------------------------------------------------------

async def test_retry_until_retries_past_max_tries_then_fails_unrun_and_queue_retry_restarts_the_clock(store,
                                                                                                      tmp_path):
    log = tmp_path / "events"
    worker = store.start_worker("--sleep", "0.05")
    try:
        # Dispatched once the worker is up, so the 4 s deadline is not spent on its start-up.
        await until(lambda: "Worker started" in store.worker_logs(), 30, "the worker to start", store)
        job_id = await DeadlineJob.dispatch(log=str(log))
        await until(lambda: log_lines(store, "FAIL", job_id), 60, "the job to fail", store)
        # Tried twice with max_tries=1: the deadline, not max_tries, bounds the tries. The second
        # failure is retried 5 s later, past retry_until=4: that reservation fails it without running.
        handles = handles_of(log, job_id)
        assert [e["attempts"] for e in handles] == [1, 2], store.worker_logs()
        assert len(log_lines(store, "RETRY", job_id)) == 2
        assert [line.split("] ", 1)[1] for line in log_lines(store, "RUNNING", job_id)] == [
            "attempt 1 (try 1 until retry_until, 0 releases)", "attempt 2 (try 2 until retry_until, 0 releases)"]
        [failure] = failures_of(log, job_id)
        assert failure.startswith("RetryDeadlinePassed: DeadlineJob ") and "retry_until of 4s" in failure
        row = (await failed_rows(store))[job_id]
        assert row.exception.startswith("core.worker.RetryDeadlinePassed: ")

        # queue:retry puts it back with the clock restarted: it runs again (from attempt 1), where
        # the old push time would have failed it unrun at once.
        assert job_id in run_cli("queue:retry", job_id, check=True).stdout
        await until(lambda: len(handles_of(log, job_id)) >= 3, 30, "the retried job to run", store)
        await stop(store, worker)
    finally:
        store.kill(worker)
    assert handles_of(log, job_id)[2]["attempts"] == 1
    assert len(failures_of(log, job_id)) == 1 and job_id not in await failed_rows(store)


async def test_max_exceptions_fails_a_job_with_retry_until_after_that_many_failed_attempts(store, tmp_path):
    log = tmp_path / "events"
    job_id = await ExceptionsJob.dispatch(log=str(log))
    worker = store.start_worker("--sleep", "0.05", "--stop-when-empty")
    try:
        assert await asyncio.to_thread(worker.wait, 60) == 0, store.worker_logs()
    finally:
        store.kill(worker)
    # One release (not a failed attempt), then three failed attempts: failed at the third, with
    # retry_until's 600 s far off and max_tries=1 not the limit.
    assert [e["attempts"] for e in handles_of(log, job_id)] == [1, 2, 3, 4]
    assert len(log_lines(store, "RELEASE", job_id)) == 1 and len(log_lines(store, "RETRY", job_id)) == 2
    assert failures_of(log, job_id) == ["RuntimeError: exceptions job fails (attempt 4)"]
    rows = await failed_rows(store)
    assert list(rows) == [job_id]
    assert rows[job_id].exception.startswith("RuntimeError: exceptions job fails (attempt 4)")
    assert await empty(store)


# -- ThrottlesExceptions -----------------------------------------------------------------------

async def test_throttles_exceptions_holds_a_class_back_after_max_exceptions_until_decay_and_a_success_closes_it(
        store, tmp_path):
    log = tmp_path / "events"
    decay = ThrottledJob.DECAY
    worker = store.start_worker("--sleep", "0.05")
    try:
        first = [await ThrottledJob.dispatch(log=str(log), raises=True) for _ in range(2)]
        await until(lambda: len(events(log, "failed")) == 2, 30, "two failures", store)
        # The class's circuit is open: its next job is released unrun; one with its own key runs.
        held = await ThrottledJob.dispatch(log=str(log))
        other = await ThrottledJob.dispatch(log=str(log), key="other")
        await until(lambda: handles_of(log, held) and handles_of(log, other), 30, "both to run", store)
        await until(lambda: log_lines(store, "DONE", held), 10, "its DONE line", store)
        # A success closed the circuit: one more failure is one, not the third in a row.
        third = await ThrottledJob.dispatch(log=str(log), raises=True)
        await until(lambda: len(events(log, "failed")) == 3, 30, "the third failure", store)
        after = await ThrottledJob.dispatch(log=str(log))
        await until(lambda: log_lines(store, "DONE", after), 30, "the job after it", store)
        await stop(store, worker)
    finally:
        store.kill(worker)
    opened = max(handles_of(log, job_id)[0]["at"] for job_id in first)    # the circuit opened after this
    [ran] = handles_of(log, held)
    assert ran["releases"] >= 1 and ran["at"] >= opened + decay - EPSILON, store.worker_logs()
    releases = log_lines(store, "RELEASE", held)
    assert releases and all("(middleware)" in line for line in releases)
    assert not log_lines(store, "RETRY", held) and not log_lines(store, "FAIL", held)   # releases, not tries
    assert handles_of(log, other)[0]["releases"] == 0 and not log_lines(store, "RELEASE", other)
    assert handles_of(log, after)[0]["releases"] == 0 and not log_lines(store, "RELEASE", after)
    assert Counter(e["job_id"] for e in events(log, "handle")) == Counter([*first, held, other, third, after])
    assert set(await failed_rows(store)) == {*first, third} and await empty(store)


async def test_throttles_exceptions_backoff_delays_the_retry_of_a_failed_try(store, tmp_path):
    log = tmp_path / "events"
    job_id = await BackoffJob.dispatch(log=str(log))
    worker = store.start_worker("--sleep", "0.05")     # not --stop-when-empty: the retry waits 2 s
    try:
        await until(lambda: log_lines(store, "DONE", job_id), 30, "the retried job", store)
        await stop(store, worker)
    finally:
        store.kill(worker)
    first, second = handles_of(log, job_id)
    [retry] = log_lines(store, "RETRY", job_id)
    assert retry.endswith(f"retry in {BackoffJob.BACKOFF}s") and "(RuntimeError: fails once)" in retry
    assert second["at"] >= first["at"] + BackoffJob.BACKOFF - EPSILON
    assert log_lines(store, "DONE", job_id) and await failed_rows(store) == {} and await empty(store)


# -- an exception raised after release() ---------------------------------------------------------

async def test_an_exception_after_release_is_a_failed_try_retried_after_the_release_delay(store, tmp_path):
    log = tmp_path / "events"
    retried = await ReleaseThenRaiseJob.dispatch(log=str(log))
    one_try = await OneTryReleaseThenRaiseJob.dispatch(log=str(log))
    worker = store.start_worker("--sleep", "0.05")     # not --stop-when-empty: the retry waits 2 s
    try:
        await until(lambda: log_lines(store, "DONE", retried) and log_lines(store, "FAIL", one_try), 30,
                    "both jobs to end", store)
        await stop(store, worker)
    finally:
        store.kill(worker)
    # max_tries=2: a RETRY (not a RELEASE) after release()'s 2 s, then a success.
    first, second = handles_of(log, retried)
    [retry] = log_lines(store, "RETRY", retried)
    assert retry.endswith(f"retry in {ReleaseThenRaiseJob.DELAY}s")
    assert "(RuntimeError: raised after release())" in retry
    assert not log_lines(store, "RELEASE", retried) and second["releases"] == 0
    assert second["at"] >= first["at"] + ReleaseThenRaiseJob.DELAY - EPSILON
    assert log_lines(store, "DONE", retried)
    # max_tries=1: that failed try was its only one.
    assert len(handles_of(log, one_try)) == 1 and failures_of(log, one_try) == ["RuntimeError: raised after release()"]
    assert not log_lines(store, "RELEASE", one_try) and log_lines(store, "FAIL", one_try)
    assert list(await failed_rows(store)) == [one_try] and await empty(store)


# -- Skip and FailOnException --------------------------------------------------------------------

async def test_skip_deletes_unrun_and_fail_on_exception_fails_at_once(store, tmp_path):
    log = str(tmp_path / "events")
    blocked = await SkipJob.dispatch(log=log, blocked=True)
    refused = await SkipJob.dispatch(log=log, allowed=False)
    allowed = await SkipJob.dispatch(log=log)
    lookup = await FailOnJob.dispatch(log=log, error="lookup")
    fatal = await FailOnJob.dispatch(log=log, error="fatal")
    passing = await FailOnJob.dispatch(log=log)
    worker = store.start_worker("--sleep", "0.05", "--stop-when-empty")
    try:
        assert await asyncio.to_thread(worker.wait, 60) == 0, store.worker_logs()
    finally:
        store.kill(worker)
    handles = Counter(e["job_id"] for e in events(log, "handle"))
    rows = await failed_rows(store)
    # Skip.when(True) and Skip.unless(a callable returning False): acknowledged unrun, a SKIP line, no row.
    for skipped in (blocked, refused):
        assert handles[skipped] == 0 and failures_of(log, skipped) == [] and skipped not in rows
        [line] = log_lines(store, "SKIP", skipped)
        assert line.endswith("(skipped)")
    assert handles[allowed] == 1 and log_lines(store, "DONE", allowed)
    # FailOnException: failed() once, a FAIL line and a failed_jobs row after one try of three.
    assert handles[lookup] == 1 and failures_of(log, lookup) == ["KeyError: 'no such device'"]
    assert handles[fatal] == 1 and failures_of(log, fatal) == ["RuntimeError: fatal: the firmware refused"]
    for failed in (lookup, fatal):
        assert log_lines(store, "FAIL", failed) and not log_lines(store, "RETRY", failed)
    assert rows[lookup].exception.startswith("KeyError: 'no such device'")
    assert rows[fatal].exception.startswith("RuntimeError: fatal: the firmware refused")
    # Another exception is a failed try as usual.
    assert handles[passing] == 2 and len(log_lines(store, "RETRY", passing)) == 1 and log_lines(store, "DONE", passing)
    assert set(rows) == {lookup, fatal} and await empty(store)
