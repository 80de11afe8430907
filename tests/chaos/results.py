"""SPEC 11 under chaos: the results kept by the jobs that keep one, judged after the drain.

Every job that keeps a result and whose last run succeeded has exactly one result record, saying
completed, and is not also still queued; a job that keeps none has no record. A succeeded job with
no record is allowed only where queue:clear explains it (a run finished, its worker was killed
before acknowledging, and the clear removed the job before it ran again): the caller compares that
count with the report's."""
from __future__ import annotations

from core.queue.contract import QueueConnection
from core.queue.redis import RedisQueue
from tests.chaos.analysis import PlannedJob, Run

KEEP_SECONDS = 600


async def _counts(conn: QueueConnection, queue: str, job_id: str) -> tuple[int, int]:
    """(records, queued) of one job, read straight from the store."""
    if isinstance(conn, RedisQueue):
        k = conn.keys(queue)
        return int(await conn.client.hexists(k.results, job_id)), int(await conn.client.hexists(k.jobs, job_id))
    db = conn.db      # type: ignore[attr-defined]
    (records,) = await db.fetchone("SELECT COUNT(*) FROM job_results WHERE uuid = ?", (job_id,))
    (queued,) = await db.fetchone("SELECT COUNT(*) FROM jobs WHERE uuid = ?", (job_id,))
    return int(records), int(queued)


async def judge_results(conn: QueueConnection, queue: str, planned: dict[str, PlannedJob],
                        runs: dict[str, list[Run]], failures: dict[str, str]) -> tuple[int, int, list[str]]:
    """(records checked, succeeded jobs without a record, problems)."""
    checked, unrecorded, problems = 0, 0, []
    for job_id, plan in planned.items():
        job_runs = runs.get(job_id, [])
        succeeded = bool(job_runs) and job_runs[-1].outcome == "ok" and job_id not in failures
        records, queued = await _counts(conn, queue, job_id)
        status = await conn.job_status(queue, job_id)
        state = status.state if status else "unknown"
        if records > 1:
            problems.append(f"{job_id[:8]}: {records} result records")
        if records and queued:
            problems.append(f"{job_id[:8]}: has a result record and is still queued ({state})")
        if not plan.keeps:
            if records:
                problems.append(f"{job_id[:8]}: keeps no result, yet has a record ({state})")
            continue
        checked += records
        if succeeded and state != "completed":
            unrecorded += 1
        elif not succeeded and state == "completed":
            problems.append(f"{job_id[:8]}: recorded completed, but its last run did not succeed")
    return checked, unrecorded, problems
