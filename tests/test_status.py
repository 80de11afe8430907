"""SPEC 11 through `python main.py queue:work` processes and the CLI, on SQLite, MySQL and Redis:
wait() on completed, failed, cancelled, not-kept and unknown jobs; status(); cancelling pending,
delayed and running jobs; progress; queue:status, queue:jobs, queue:cancel, queue:prune-results.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.job import InvalidPriority
from core.queue import (JobCancelled, JobFailed, JobNotFound, JobRef, ResultNotKept, ResultNotSerializable,
                        WaitTimeout, job_ref)
from tests.conftest import run_cli
from tests.jobs.status_jobs import (AddJob, AlwaysFailsJob, CancelledOnItsLastTryJob, CancelledThenFailsJob,
                                   LongJob, NoResultJob, RetryLaterJob, SkipsItselfJob, UnkeepableResultJob)
from tests.worker_support import events, failed_rows, stop, until


async def finish(store, worker) -> None:
    """A --stop-when-empty worker's own exit (a SIGTERM could land after it put its handlers away)."""
    import asyncio

    assert await asyncio.to_thread(worker.wait, 60) == 0, store.worker_logs()

pytestmark = pytest.mark.slow


async def test_wait_returns_the_value_and_queue_status_shows_the_kept_result(store):
    ref = await AddJob.dispatch(a=2, b=3)
    assert isinstance(ref, JobRef) and isinstance(ref, str) and ref.created
    assert (await ref.status()).state == "pending"
    worker = store.start_worker("--stop-when-empty")
    try:
        assert await ref.wait(timeout=20) == 5
    finally:
        await finish(store, worker)
    shown = run_cli("queue:status", ref, store.connection, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["state"] == "completed" and data["result"] == 5 and data["attempts"] == 1
    assert data["job"] == "tests.jobs.status_jobs.AddJob" and data["finished_at"] >= int(data["dispatched_at"])
    # A ref rebuilt from the id alone (no queue: every queue is looked in) sees the same record.
    assert await job_ref(str(ref), connection=store.connection).wait(1) == 5


async def test_wait_raises_job_failed_with_the_exception_and_status_reports_failed(store):
    ref = await AlwaysFailsJob.dispatch()
    worker = store.start_worker("--stop-when-empty")
    try:
        with pytest.raises(JobFailed) as failed:
            await ref.wait(timeout=20)
    finally:
        await finish(store, worker)
    assert failed.value.exception_class == "ValueError" and failed.value.message == "sensor 7 is offline"
    assert "Traceback" in failed.value.traceback
    status = await ref.status()
    assert status.state == "failed" and status.last_error == "ValueError: sensor 7 is offline"
    assert status.keep_result == 60 and status.max_tries == 1       # the class's settings, as dispatched
    assert status.attempts == 1                                     # the tries it had
    assert ref in await failed_rows(store)


def test_job_failed_keeps_every_line_of_the_message_apart_from_the_traceback():
    """failed_jobs.exception as the worker writes it, for a message of several lines: wait()'s JobFailed
    has the whole message, and the traceback starts at "Traceback"."""
    from core.worker.outcome import exception_text

    try:
        raise RuntimeError("sensor 7 is offline\nlast seen 12:00\n\nretry later")
    except RuntimeError as exc:
        text = exception_text(exc, [])
    failed = JobFailed("abc", text)
    assert failed.exception_class == "RuntimeError"
    assert failed.message == "sensor 7 is offline\nlast seen 12:00\n\nretry later"
    assert failed.traceback.startswith("Traceback (most recent call last):")
    assert str(failed) == "job abc failed: RuntimeError: sensor 7 is offline"
    assert JobFailed("abc", "ValueError: bad").message == "bad"     # no traceback: a message alone


async def test_a_retried_job_shows_delayed_with_its_attempts_and_last_error(store):
    ref = await RetryLaterJob.dispatch()
    worker = store.start_worker("--stop-when-empty")
    await finish(store, worker)
    status = await ref.status()
    assert (status.state, status.attempts, status.max_tries) == ("delayed", 1, 3)
    assert status.last_error == "ConnectionError: vendor API unreachable"
    assert status.available_at is not None and status.available_at > status.dispatched_at + 30
    shown = json.loads(run_cli("queue:status", ref, store.connection, "--queue", "default", "--json",
                               check=True).stdout)
    assert shown["state"] == "delayed" and shown["last_error"] == "ConnectionError: vendor API unreachable"


async def test_wait_on_a_job_that_keeps_no_result_raises_at_once(store):
    ref = await NoResultJob.dispatch()
    with pytest.raises(ResultNotKept):
        await ref.wait(timeout=30)       # no worker runs: it must not wait for one
    assert (await ref.status()).state == "pending"


async def test_wait_and_queue_status_on_an_unknown_job(store):
    with pytest.raises(JobNotFound):
        await job_ref("5f0c0000-0000-4000-8000-000000000000", connection=store.connection, queue="default").wait(5)
    shown = run_cli("queue:status", "5f0c0000-0000-4000-8000-000000000000", store.connection, "--json")
    assert shown.returncode == 1 and json.loads(shown.stdout)["state"] == "unknown"


async def test_wait_times_out_with_the_last_state_seen(store):
    ref = await AddJob.dispatch(a=1, b=1).delay(60)
    with pytest.raises(WaitTimeout) as timed_out:
        await ref.wait(timeout=0.3)
    assert isinstance(timed_out.value, TimeoutError) and timed_out.value.state == "delayed"


async def test_a_result_that_cannot_be_kept_completes_the_job_and_wait_says_so(store):
    ref = await UnkeepableResultJob.dispatch()
    worker = store.start_worker("--stop-when-empty")
    try:
        with pytest.raises(ResultNotSerializable):
            await ref.wait(timeout=20)
    finally:
        await finish(store, worker)
    assert (await ref.status()).state == "completed"
    assert ref not in await failed_rows(store)


async def test_a_job_that_deletes_itself_and_keeps_results_is_recorded_skipped(store):
    """SPEC 9: delete() acknowledges without success, state skipped; with keep_result the record says so,
    and wait() ends on it instead of calling the job unknown."""
    ref = await SkipsItselfJob.dispatch()
    worker = store.start_worker("--stop-when-empty")
    try:
        with pytest.raises(JobCancelled, match="skipped"):
            await ref.wait(timeout=20)
    finally:
        await finish(store, worker)
    assert (await ref.status()).state == "skipped"
    shown = json.loads(run_cli("queue:status", ref, "--json", check=True).stdout)
    assert (shown["state"], shown["job"]) == ("skipped", "tests.jobs.status_jobs.SkipsItselfJob")
    listed = json.loads(run_cli("queue:jobs", "--state", "skipped", "--json", check=True).stdout)
    assert [job["id"] for job in listed] == [ref]
    assert ref not in await failed_rows(store)


async def test_cancelling_pending_and_delayed_jobs_removes_them_and_they_never_run(store, tmp_path):
    pending = await AddJob.dispatch(a=1, b=2)
    delayed = await AddJob.dispatch(a=3, b=4).delay(60)
    kept = await AddJob.dispatch(a=5, b=6)
    assert await pending.cancel() == "cancelled"
    cancelled = run_cli("queue:cancel", delayed, store.connection)
    assert cancelled.returncode == 0 and f"Cancelled {delayed}" in cancelled.stdout
    for ref in (pending, delayed):
        assert (await ref.status()).state == "cancelled"
        with pytest.raises(JobCancelled):
            await ref.wait(1)
    sizes = (await store.conn.sizes(["default"]))["default"]
    assert (sizes.pending, sizes.delayed) == (1, 0)
    worker = store.start_worker("--stop-when-empty")
    try:
        assert await kept.wait(20) == 11
    finally:
        await finish(store, worker)
    assert f"[{pending}]" not in store.worker_logs() and f"[{delayed}]" not in store.worker_logs()
    # Cancelling a finished job changes nothing and says so.
    again = run_cli("queue:cancel", kept, store.connection)
    assert again.returncode == 0 and "already completed" in again.stdout
    assert (await kept.status()).state == "completed"


async def test_a_running_job_is_cancelled_at_its_next_await_not_retried_and_failed_is_not_called(store, tmp_path):
    log = str(tmp_path / "events")
    ref = await LongJob.dispatch(log=log)
    worker = store.start_worker("--sleep", "0.05")
    try:
        await until(lambda: events(log, "started"), 30, "the job to start", store)
        status = await ref.status()
        assert status.state == "reserved" and status.progress == {"fraction": 0.4, "text": "parsing"}
        assert await ref.cancel() == "reserved"
        with pytest.raises(JobCancelled):
            await ref.wait(timeout=20)
        assert (await ref.status()).state == "cancelled"
        # Given time to misbehave: the job would come back after its retry; it does not.
        Path(log + ".done").write_text("")
        await until(lambda: "CANCEL" in store.worker_logs(), 10, "the CANCEL line", store)
    finally:
        await stop(store, worker)
    assert len(events(log, "started")) == 1
    assert not events(log, "finished") and not events(log, "failed")
    assert ref not in await failed_rows(store)
    sizes = (await store.conn.sizes(["default"]))["default"]
    assert (sizes.pending, sizes.delayed, sizes.reserved) == (0, 0, 0)
    listed = json.loads(run_cli("queue:jobs", "--state", "cancelled", "--json", check=True).stdout)
    assert [job["id"] for job in listed] == [ref]


@pytest.mark.parametrize("job_class", [CancelledThenFailsJob, CancelledOnItsLastTryJob])
async def test_a_job_cancelled_while_running_that_then_raises_is_cancelled_not_retried_or_failed(store, tmp_path,
                                                                                                 job_class):
    """The cancel request is stored while the job runs, and its attempt raises before the worker's
    heartbeat (every 2 s at most) has read it: with tries left it must not be retried, on its last try
    it must not be failed; either way failed() is not called. (It was retried and ended in failed_jobs.)"""
    log = str(tmp_path / "events")
    ref = await job_class.dispatch(log=log, conn=store.connection)
    worker = store.start_worker("--sleep", "0.05")
    try:
        with pytest.raises(JobCancelled):
            await ref.wait(timeout=20)
        await until(lambda: "CANCEL" in store.worker_logs(), 10, "the CANCEL line", store)
    finally:
        await stop(store, worker)
    assert (await ref.status()).state == "cancelled"
    assert len(events(log, "started")) == 1 and not events(log, "failed")
    assert ref not in await failed_rows(store)
    assert "RETRY" not in store.worker_logs() and "FAIL " not in store.worker_logs()


async def test_an_invalid_priority_is_refused_at_dispatch_and_nothing_is_pushed(store):
    with pytest.raises(InvalidPriority, match="-100 to 100"):
        await NoResultJob.dispatch().priority(101)
    assert (await store.conn.sizes(["default"])).get("default") is None or \
        (await store.conn.sizes(["default"]))["default"].pending == 0


async def test_queue_jobs_lists_jobs_by_state_bounded_by_limit(store):
    refs = [await NoResultJob.dispatch() for _ in range(5)]
    later = await NoResultJob.dispatch().delay(60)
    listed = json.loads(run_cli("queue:jobs", store.connection, "--queue", "default", "--state", "pending",
                                "--limit", "3", "--json", check=True).stdout)
    assert [job["id"] for job in listed] == refs[:3]
    assert all(job["state"] == "pending" and job["queue"] == "default" for job in listed)
    delayed = json.loads(run_cli("queue:jobs", store.connection, "--queue", "default", "--state", "delayed",
                                 "--json", check=True).stdout)
    assert [job["id"] for job in delayed] == [later]
    table = run_cli("queue:jobs", store.connection, "--limit", "2", check=True).stdout
    assert "NoResultJob" in table and len([line for line in table.splitlines() if "NoResultJob" in line]) == 2


async def test_queue_jobs_lists_a_delayed_job_that_came_due_as_pending_and_no_other_state(store):
    """pending is due and not reserved: a delayed job whose time came is listed under pending (no worker
    has taken it yet), not under delayed; a state the queue holds no job in lists none."""
    import asyncio

    due = await NoResultJob.dispatch().delay(1)
    later = await NoResultJob.dispatch().delay(60)
    waiting = await NoResultJob.dispatch()
    await asyncio.sleep(2.2)

    def listed(state: str) -> list[str]:
        shown = run_cli("queue:jobs", "--queue", "default", "--state", state, "--json", check=True).stdout
        return [job["id"] for job in json.loads(shown)]

    assert sorted(listed("pending")) == sorted([due, waiting])
    assert listed("delayed") == [later]
    for state in ("skipped", "superseded", "waiting", "reserved", "completed"):
        assert listed(state) == [], state


async def test_queue_cancel_takes_ids_with_or_without_a_connection(store):
    first, second, third = [await AddJob.dispatch(a=n, b=n) for n in range(3)]
    alone = run_cli("queue:cancel", first)
    assert alone.returncode == 0 and f"Cancelled {first}." in alone.stdout, alone.stderr
    with_queue = run_cli("queue:cancel", second, "--queue", "default")
    assert with_queue.returncode == 0 and f"Cancelled {second}." in with_queue.stdout, with_queue.stderr
    both = run_cli("queue:cancel", third, second, store.connection)
    assert both.returncode == 0 and f"Cancelled {third}." in both.stdout, both.stderr
    assert f"Job {second} is already cancelled; nothing changed." in both.stdout
    assert [(await ref.status()).state for ref in (first, second, third)] == ["cancelled"] * 3
    unknown = run_cli("queue:cancel", "no-such-job", first)
    assert unknown.returncode == 1 and "No job with id no-such-job" in unknown.stderr


async def test_queue_size_json_counts_waiting(store):
    await NoResultJob.dispatch()
    sizes = json.loads(run_cli("queue:size", store.connection, "--json", check=True).stdout)
    assert sizes["queues"]["default"] == {"pending": 1, "delayed": 0, "reserved": 0, "waiting": 0}


async def test_queue_prune_results_runs_on_each_store(store):
    shown = run_cli("queue:prune-results", store.connection)
    assert shown.returncode == 0 and "Pruned 0 expired result(s)" in shown.stdout


async def test_queue_retry_with_a_delay_puts_a_failed_job_back_delayed(store):
    ref = await AlwaysFailsJob.dispatch()
    worker = store.start_worker("--stop-when-empty")
    await finish(store, worker)
    assert (await ref.status()).state == "failed"
    retried = run_cli("queue:retry", ref, "--delay", "60", check=True)
    assert "due in 60s" in retried.stdout
    status = await ref.status()
    assert (status.state, status.attempts) == ("delayed", 0)
    assert status.available_at is not None and status.available_at >= status.dispatched_at + 59
    assert ref not in await failed_rows(store)
    refused = run_cli("queue:retry", ref, "--delay", "-1")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


async def test_dispatch_many_returns_a_ref_per_job_in_order(store):
    refs = await AddJob.dispatch_many([{"a": n, "b": 1} for n in range(3)])
    assert all(isinstance(ref, JobRef) for ref in refs) and len(set(refs)) == 3
    worker = store.start_worker("--stop-when-empty")
    try:
        assert [await ref.wait(20) for ref in refs] == [1, 2, 3]
    finally:
        await finish(store, worker)


@pytest.mark.parametrize("timeout", [None, "30", float("nan"), float("inf")])
async def test_wait_without_a_number_of_seconds_is_a_clear_error_not_a_type_error(timeout):
    """wait() never hangs (SPEC 11), so None is not "for good": it says so, before asking any store."""
    ref = JobRef("5f0c0000-0000-0000-0000-000000000000", "database", "default", keep_result=60)
    with pytest.raises(ValueError, match="wait\\(\\) takes a timeout in seconds \\(it never waits for good\\)"):
        await ref.wait(timeout)
