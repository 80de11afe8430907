"""Every dispatch stores a new job with a new id (SPEC 5), on every store, through a worker."""
from __future__ import annotations

from core.queue import dispatch, dispatch_many
from core.worker import Worker, WorkerOptions
from tests.jobs.id_jobs import SelfCopyJob
from tests.jobs.sample_jobs import RecordingJob, read_events


async def work(store, queue: str) -> None:
    await Worker(store.app, WorkerOptions(queues=(queue,), stop_when_empty=True, sleep=0.05)).run()


async def test_one_instance_dispatched_twice_is_two_jobs(store, tmp_path):
    log = str(tmp_path / "events")
    job = RecordingJob()
    job.log, job.value = log, "same"
    first = await dispatch(job, queue="ids")
    second = await dispatch(job, queue="ids")
    assert first != second and job.job_id == second           # the instance names its latest dispatch
    many = await dispatch_many([job, job], queue="ids")
    assert len({first, second, *many}) == 4 and job.job_id == many[-1]
    await work(store, "ids")
    assert sorted(e["job_id"] for e in read_events(log)) == sorted([first, second, *many])


async def test_a_job_dispatching_itself_from_handle_makes_a_new_job_and_keeps_its_own_id(store, tmp_path):
    log = str(tmp_path / "events")
    original = await SelfCopyJob.dispatch(log=log, copies=2)
    await work(store, "ids")
    events = read_events(log)
    handled = [e["job_id"] for e in events if e["event"] == "handle"]
    copies = [(e["job_id"], e["copy"]) for e in events if e["event"] == "dispatched"]
    assert len(handled) == 3 and len(set(handled)) == 3 and handled[0] == original
    # Each running instance keeps its own id after dispatching its copy; the copy is the next job run.
    assert copies == [(handled[0], handled[1]), (handled[1], handled[2])]
