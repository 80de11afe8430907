"""SPEC 9 through `python main.py queue:work` processes as users run them, on SQLite, MySQL and Redis:
job middleware across workers, control from inside a job, backoff, expiry.

Times compared across processes are read from the queue store's own clock (the one the limiter
and the locks are timed on), never from log lines, so a loaded machine cannot fake a violation.
"""
from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections import Counter

import pytest

from core.queue.state_redis import RedisState
from core.worker import heartbeat_interval
from tests.jobs.control_jobs import (AlwaysFailsJob, ControlJob, ExpiringJob, FewReleasesJob, LimitedJob,
                                     OneTryReleasingJob, OverlapJob, QuietlyExpiringJob)
from tests.worker_support import EPSILON, clock, empty, events, failed_rows, stop, until

pytestmark = pytest.mark.slow


async def lock_expiry(state, name: str) -> float | None:
    """When the lock lapses, on the store's clock (None: no lock)."""
    if isinstance(state, RedisState):
        ttl = await state.client.pttl(state.key(name, "lock"))
        return None if ttl < 0 else await clock(state) + ttl / 1000
    row = await state.db.fetchone("SELECT expires_at FROM job_locks WHERE name = ?", (name,))
    return None if row is None else float(row[0])


async def run_four_workers(store, done, what: str) -> None:
    """Four workers polling every 50 ms until done() holds, then stopped (and killed if they linger)."""
    workers = [store.start_worker("--sleep", "0.05") for _ in range(4)]
    try:
        await until(done, 90, what, store)
        await stop(store, *workers)
    finally:
        for worker in workers:
            store.kill(worker)


# -- RateLimited -------------------------------------------------------------------------------

async def test_rate_limited_jobs_all_succeed_with_one_try_and_no_window_holds_more_than_allowed(store, monkeypatch,
                                                                                               tmp_path):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "10")
    log = tmp_path / "events"
    ids = await LimitedJob.dispatch_many([{"log": str(log)} for _ in range(20)])
    await run_four_workers(store, lambda: len(events(log, "start")) >= 20, "20 starts")
    starts = events(log, "start")
    assert Counter(e["job_id"] for e in starts) == Counter(ids)          # each once, max_tries=1 notwithstanding
    assert await failed_rows(store) == {} and await empty(store)
    assert sum(e["releases"] for e in starts) > 0                        # the limiter did hold jobs back
    # A start's time on the store's clock lies in [before, after]; allow=5 in every 2 s means any six
    # starts span at least 2 s, so the six's latest `after` is at least 2 s past their earliest `before`.
    for six in itertools.combinations(starts, 6):
        spread = max(e["after"] for e in six) - min(e["before"] for e in six)
        assert spread >= 2 - EPSILON, f"six starts within {spread:.3f}s: {sorted(e['after'] for e in six)}"


# -- WithoutOverlapping ------------------------------------------------------------------------

async def test_jobs_with_one_key_never_overlap_across_workers(store, monkeypatch, tmp_path):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "10")
    log = tmp_path / "events"
    ids = await OverlapJob.dispatch_many([{"log": str(log)} for _ in range(10)])
    await run_four_workers(store, lambda: len(events(log, "end")) >= 10, "10 ends")
    starts, ends = events(log, "start"), {e["job_id"]: e["at"] for e in events(log, "end")}
    assert Counter(e["job_id"] for e in starts) == Counter(ids) and set(ends) == set(ids)
    assert len({e["pid"] for e in starts}) > 1, "one worker ran them all: nothing was contended"
    runs = sorted((e["at"], ends[e["job_id"]]) for e in starts)
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start >= end, f"a job started at {start} before the one before it ended at {end}"
    assert await failed_rows(store) == {} and await empty(store)


async def test_a_killed_holders_lock_lapses_with_its_reservation_and_not_before(store, monkeypatch, tmp_path):
    visibility = 4
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", str(visibility))
    log = tmp_path / "events"
    holder_id = await OverlapJob.dispatch(log=str(log), seconds=20).on_queue("holder")
    holder = store.start_worker("--queue", "holder", "--sleep", "0.05")
    other = None
    try:
        await until(lambda: events(log, "start"), 30, "the holder to start", store)
        waiter_id = await OverlapJob.dispatch(log=str(log), seconds=0.1)
        other = store.start_worker("--queue", "default", "--sleep", "0.05")
        # Longer than the lock lasts unless renewed: the heartbeat renews it with the reservation.
        await asyncio.sleep(visibility + 2)
        assert [e["job_id"] for e in events(log, "start")] == [holder_id], store.worker_logs()
        assert holder.poll() is None
        store.kill(holder)
        killed_at = await clock(store.conn.state)
        lapses_at = await lock_expiry(store.conn.state, "overlap:acceptance")
        assert lapses_at is not None and lapses_at <= killed_at + visibility + EPSILON
        await until(lambda: len(events(log, "end")) == 1, 30, "the waiter to run", store)
        await stop(store, other)
    finally:
        store.kill(holder)
        if other is not None:
            store.kill(other)
    [started] = [e for e in events(log, "start") if e["job_id"] == waiter_id]
    assert started["at"] >= lapses_at, "the waiter started while the killed worker's lock still held"
    # The lock lapses at most a visibility timeout after the kill; then the waiter's pending release
    # (0.2 s, whole seconds on the database) and one heartbeat period for its worker to take it.
    margin = heartbeat_interval(visibility) + math.ceil(OverlapJob().release_after)
    assert started["at"] - killed_at <= visibility + margin, store.worker_logs()


# -- Exponential backoff -----------------------------------------------------------------------

async def test_exponential_backoff_spaces_the_retries_1_2_4_8_8(store, monkeypatch, tmp_path):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "10")
    log = tmp_path / "events"
    job_id = await AlwaysFailsJob.dispatch(log=str(log))
    worker = store.start_worker("--sleep", "0.05")
    try:
        await until(lambda: events(log, "failed"), 60, "the job to fail", store)
        await until(lambda: "FAIL " in store.worker_logs(), 10, "the FAIL line", store)
        await stop(store, worker)
    finally:
        store.kill(worker)
    retries = [line for line in store.worker_logs().splitlines() if line.split()[2:3] == ["RETRY"]]
    assert [re.search(r"retry in (\S+)s", line)[1] for line in retries] == ["1", "2", "4", "8", "8"]
    assert len(events(log, "handle")) == 6 and len(events(log, "failed")) == 1
    assert "RuntimeError: always fails (attempt 6)" in (await failed_rows(store))[job_id].exception


# -- expires_after -----------------------------------------------------------------------------

async def test_a_job_not_started_within_expires_after_is_recorded_expired_and_never_run(store, tmp_path):
    log = tmp_path / "events"
    expired_id = await ExpiringJob.dispatch(log=str(log))
    quiet_id = await QuietlyExpiringJob.dispatch(log=str(log))
    await asyncio.sleep(3.5)     # no worker; the database counts whole seconds: 1 s late at least
    worker = store.start_worker("--sleep", "0.05", "--stop-when-empty")
    try:
        assert await asyncio.to_thread(worker.wait, 30) == 0, store.worker_logs()
    finally:
        store.kill(worker)
    assert events(log, "handle") == []
    assert [e["job_id"] for e in events(log, "failed")] == [expired_id]
    assert events(log, "failed")[0]["exception"] == "JobExpired"
    rows = await failed_rows(store)
    assert list(rows) == [expired_id] and rows[expired_id].exception.startswith("core.worker.JobExpired: ")
    assert f"SKIP    QuietlyExpiringJob [{quiet_id}]" in store.worker_logs()
    assert "(expired)" in store.worker_logs() and await empty(store)


# -- control from inside a job -----------------------------------------------------------------

async def test_release_delete_fail_and_dont_retry_from_inside_handle(store, tmp_path):
    log = str(tmp_path / "events")
    released = await OneTryReleasingJob.dispatch(log=log, action="release", releases=5)
    too_many = await FewReleasesJob.dispatch(log=log, action="release", releases=10)
    deleted = await ControlJob.dispatch(log=log, action="delete")
    failed = await ControlJob.dispatch(log=log, action="fail")
    raised = await ControlJob.dispatch(log=log, action="raise")
    worker = store.start_worker("--sleep", "0.05", "--stop-when-empty")
    try:
        assert await asyncio.to_thread(worker.wait, 60) == 0, store.worker_logs()
    finally:
        store.kill(worker)
    out = store.worker_logs()
    handles = Counter(e["job_id"] for e in events(log, "handle"))
    calls = Counter(e["job_id"] for e in events(log, "failed"))
    rows = await failed_rows(store)
    # Five releases and a success with max_tries=1: releases are not tries.
    assert handles[released] == 6 and [e["job_id"] for e in events(log, "done")] == [released]
    # max_releases=2: the third release is one too many; the job fails then, not stored as a release
    # (whose delay it would wait out only to fail at its next reservation), and never runs again.
    assert handles[too_many] == 3 and calls[too_many] == 1
    assert rows[too_many].exception.startswith("core.worker.TooManyReleases: ")
    assert out.count(f"RELEASE FewReleasesJob [{too_many}]") == 2
    assert "released 3 times, over its max_releases of 2" in rows[too_many].exception
    # delete(): gone, no failed row, a SKIP line; an exception after it changes nothing.
    assert handles[deleted] == 1 and calls[deleted] == 0 and deleted not in rows
    assert f"SKIP    ControlJob [{deleted}]" in out
    # fail(exc): failed() once with that exception, no retry, the exception after it ignored.
    assert handles[failed] == 1 and calls[failed] == 1
    assert events(log, "failed")[[e["job_id"] for e in events(log, "failed")].index(failed)]["exception"] == \
        "LookupError: the device is gone"
    assert rows[failed].exception.startswith("LookupError: the device is gone")
    # dont_retry = (ValueError,): failed at once, with tries left.
    assert handles[raised] == 1 and calls[raised] == 1 and rows[raised].exception.startswith("ValueError: ")
    assert set(rows) == {too_many, failed, raised} and await empty(store)
