"""SPEC 11 on the database: results kept with the acknowledgement (job_results), a job's status,
cancelling, listing, progress. A mixin of DatabaseQueue (database.py), in the dialect-placeholder
style of its statements, so every database (PostgreSQL too) runs them unchanged.

A job that keeps no result and has no priority touches none of this: its statements are as before.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from core.database import Statement, Steps, change, fetch
from core.payload import peek_uuid
from core.queue.contract import KeptResult, ReservedJob
from core.queue.status import CANCEL_KEEP, JobStatus, parse_progress, from_failed, from_payload, from_record

if TYPE_CHECKING:
    from core.database import Database
    from core.queue.failed import FailedJobStore

RESULT = ("INSERT INTO job_results (uuid, queue, state, record, finished_at, expires_at) "
          "VALUES (?, ?, ?, ?, {now}, {now} + ?)")
# The same, as a statement that writes only while the job's reservation holds its row (the columns
# named apart from jobs' own, so that the upsert's names are job_results' alone).
RESULT_HELD = ("INSERT INTO job_results (uuid, queue, state, record, finished_at, expires_at) SELECT * FROM "
               "(SELECT ? AS u, ? AS q, ? AS s, ? AS r, {now} AS f, {now} + ? AS e FROM jobs "
               "WHERE id = ? AND attempts = ? AND claim = ? AND reserved_at IS NOT NULL) kept")
# Where the acknowledgement is one statement (PostgreSQL), the results go into it: the records of the
# rows it deleted, in the same statement (database.py's ACKNOWLEDGE, its held rows with these columns).
RESULT_COLUMNS = ", result_uuid, result_queue, result_state, record, keep"
RESULT_ARRAYS = (", CAST(? AS VARCHAR(255)[]), CAST(? AS VARCHAR(255)[]), CAST(? AS VARCHAR(255)[]), "
                 "CAST(? AS TEXT[]), CAST(? AS DOUBLE PRECISION[])")
RESULTS_OF_GONE = (", results AS (INSERT INTO job_results (uuid, queue, state, record, finished_at, expires_at) "
                   "SELECT DISTINCT ON (h.result_uuid) h.result_uuid, h.result_queue, h.result_state, h.record, "
                   "{now}, {now} + h.keep FROM held h JOIN gone g ON g.id = h.id{upsert})")
RESULT_AGAIN = ("state = excluded.state, record = excluded.record, finished_at = excluded.finished_at, "
                "expires_at = excluded.expires_at")     # a job queue:retry brought back finished again
RESULT_OF = "SELECT record, finished_at FROM job_results WHERE uuid = ? AND expires_at >= {now}"
RESULTS = "SELECT uuid, record, finished_at FROM job_results WHERE expires_at >= {now}"
PRUNE_RESULTS = "DELETE FROM job_results WHERE expires_at < {now}"
PRUNE_RESULTS_EVERY = 256     # results stored between two bounded prunes, per process
JOB_BY_UUID = ("SELECT id, queue, payload, attempts, state, available_at, last_error, progress, {now} "
               "FROM jobs WHERE uuid = ?")
LIST = "SELECT id, queue, payload, attempts, state, available_at, last_error, progress, {now} FROM jobs"
# A state's rows, by the state column and the clock: a DELAYED row already due, and a RESERVED row whose
# reservation lapsed (a dead worker's), are pending (SPEC: pending is due, not reserved), until a reserve
# takes them. Each is one range of an index on (queue, state, available_at); pending is three, each read
# with the LIMIT.
STATE_WHERE = {"pending": ("state = 0", "state = 1 AND available_at <= {now}", "state = 2 AND available_at <= {now}"),
               "delayed": ("state = 1 AND available_at > {now}",), "reserved": ("state = 2 AND available_at > {now}",)}
# States this store keeps records of (job_results); the rest of SPEC's (waiting, superseded) it never holds.
RECORDED = ("completed", "cancelled", "skipped")
FLAG_CANCEL = "UPDATE jobs SET cancelled = 1 WHERE id = ?"
CANCELLED_OF = "SELECT id FROM jobs WHERE cancelled = 1 AND id IN "
DELETE_ONE = "DELETE FROM jobs WHERE id = ?"
SET_PROGRESS = "UPDATE jobs SET progress = ? WHERE id = ? AND attempts = ? AND claim = ? AND reserved_at IS NOT NULL"


def _marks(n: int) -> str:
    return "(" + ", ".join("?" for _ in range(n)) + ")"


def fence(job: ReservedJob) -> tuple[int, int, str]:
    """A reservation's row: its id, attempts and claim, which every statement on a held row matches."""
    attempts, _, claim = job.token.partition(":")
    return int(job.id), int(attempts), claim


def held_arrays(jobs: Sequence[ReservedJob]) -> list[list[Any]]:
    """The one-statement acknowledgement's parameters: the held rows' ids, attempts, claims, uuids."""
    fences = [fence(job) for job in jobs]
    return [[job_id for job_id, _, _ in fences], [attempts for _, attempts, _ in fences],
            [claim for _, _, claim in fences], [peek_uuid(job.payload) for job in jobs]]


class DatabaseJobs:
    db: "Database"
    failed: "FailedJobStore"
    _lock_held: str
    _one_statement: bool
    _acknowledge: str
    _complete: str | None = None

    def _acknowledge_steps(self, jobs: Sequence[ReservedJob]) -> Steps[list[bool]]:
        raise NotImplementedError

    def _remember_steps(self, uuids: Sequence[str | None]) -> Steps[None]:
        raise NotImplementedError

    def _acknowledged(self, jobs: Sequence[ReservedJob], rows: Sequence[tuple]) -> Steps[list[bool]]:
        raise NotImplementedError

    async def complete_many(self, jobs: Sequence[ReservedJob], results: Sequence[KeptResult]) -> list[bool]:
        """acknowledge_many and each acknowledged job's record in one transaction: a fenced-off
        worker (its delete found no row) writes none."""
        if not jobs:
            return []
        if self._one_statement:
            return await self.db.run_statements(self._complete_one_steps(jobs, results))
        if self.db.batches:
            records = [self._result_statement(job, kept) for job, kept in zip(jobs, results)]
            return await self._acknowledge_at_once(jobs, [*records, *self._results_prune(len(jobs))])
        return await self.db.run_transaction(self._complete_steps(jobs, results))

    def _complete_one_steps(self, jobs: Sequence[ReservedJob], results: Sequence[KeptResult]) -> Steps[list[bool]]:
        """One statement: delete the rows still held, remember their uuids, store their records. A
        transaction of several round trips kept the rows locked while job code blocking the loop ran
        between them; the heartbeat's renewal skips locked rows, so a cut then rolled back an
        acknowledgement whose reservation had lapsed meanwhile (a second run)."""
        if self._complete is None:
            self._complete = (self._acknowledge.replace("{columns}", RESULT_COLUMNS).replace("{arrays}", RESULT_ARRAYS)
                              .replace("{also}", RESULTS_OF_GONE.replace(
                                  "{upsert}", self.db.dialect.upsert("uuid", RESULT_AGAIN))))
        params = [*held_arrays(jobs), [peek_uuid(job.payload) or job.id for job in jobs], [job.queue for job in jobs],
                  [kept.state for kept in results], [kept.record for kept in results],
                  [float(kept.keep) for kept in results]]
        rows = yield fetch(self._complete, params)
        for statement in self._results_prune(len(rows)):
            yield statement
        return (yield from self._acknowledged(jobs, rows))

    def _result_statement(self, job: ReservedJob, kept: KeptResult) -> Statement:
        """The record of a job, written only while `job`'s reservation holds its row (a statement
        of a batch sent whole, which cannot wait for the acknowledgement's answer)."""
        params = (peek_uuid(job.payload) or job.id, job.queue, kept.state, kept.record, kept.keep, *fence(job))
        return change(RESULT_HELD + self.db.dialect.upsert("uuid", RESULT_AGAIN), params)

    def _results_prune(self, stored: int) -> list[Statement]:
        self._results_since_prune = getattr(self, "_results_since_prune", 0) + stored
        if self._results_since_prune < PRUNE_RESULTS_EVERY:
            return []
        self._results_since_prune = 0
        return [change(self.db.dialect.delete_first("job_results", "uuid", "expires_at < {now}", "expires_at"),
                       (4 * PRUNE_RESULTS_EVERY,))]

    async def _acknowledge_at_once(self, jobs: Sequence[ReservedJob], records: Sequence[Statement]) -> list[bool]:
        raise NotImplementedError

    def _complete_steps(self, jobs: Sequence[ReservedJob], results: Sequence[KeptResult]) -> Steps[list[bool]]:
        done = yield from self._acknowledge_steps(jobs)
        for job, kept, ok in zip(jobs, results, done):
            if ok:
                yield from self._result_steps(peek_uuid(job.payload) or job.id, job.queue, kept.state, kept)
        return done

    def _result_steps(self, job_uuid: str, queue: str, state: str, kept: KeptResult) -> Steps[None]:
        upsert = self.db.dialect.upsert("uuid", RESULT_AGAIN)
        yield change(RESULT + upsert, (job_uuid, queue, state, kept.record, kept.keep))
        for statement in self._results_prune(1):
            yield statement

    # -- status ---------------------------------------------------------------------------------

    async def job_status(self, queue: str | None, job_id: str) -> JobStatus | None:
        """The jobs row, then job_results, then failed_jobs: each move between them is one
        transaction (or the failed row is written before the delete), so a job is never missed."""
        row = await self.db.fetchone(JOB_BY_UUID, (job_id,))
        if row is not None:
            return _queued(job_id, row)
        found = await self.db.fetchone(RESULT_OF, (job_id,))
        if found is not None:
            return from_record(job_id, found[0], float(found[1]))
        failed = await self.failed.find(job_id)
        return from_failed(failed) if failed is not None else None

    async def jobs(self, queue: str | None, state: str | None, limit: int) -> list[JobStatus]:
        """One indexed query, LIMIT `limit`: jobs in reserve order within a queue, else by id."""
        if state == "failed":
            return [from_failed(f) for f in await self.failed.latest(limit, queue)]
        if state in RECORDED:
            where, kept = " AND state = ?", [state]
            if queue:
                where, kept = where + " AND queue = ?", [state, queue]
            records = await self.db.fetchall(RESULTS + where + " ORDER BY expires_at DESC LIMIT ?", [*kept, limit])
            return [from_record(job_uuid, record, float(at)) for job_uuid, record, at in records]
        if state is not None and state not in STATE_WHERE:
            return []
        order = " ORDER BY available_at, priority_rank, id" if queue and state else " ORDER BY id"
        rows: list[tuple] = []
        for condition in STATE_WHERE[state] if state else ("",):
            clauses = [c for c in ("queue = ?" if queue else "", condition) if c]
            where = " WHERE " + " AND ".join(clauses) if clauses else ""
            rows += await self.db.fetchall(LIST + where + order + " LIMIT ?",
                                           [*([queue] if queue else []), limit - len(rows)])
            if len(rows) >= limit:
                break
        return [_queued(None, row) for row in rows]

    async def prune_results(self) -> int:
        return await self.db.execute(PRUNE_RESULTS)

    # -- cancel and progress --------------------------------------------------------------------

    async def cancel_job(self, queue: str | None, job_id: str) -> str:
        state = await self.db.run_transaction(self._cancel_steps(job_id))
        if state:
            return state
        status = await self.job_status(queue, job_id)
        return "unknown" if status is None else status.state

    def _cancel_steps(self, job_uuid: str) -> Steps[str]:
        """A waiting row is deleted and recorded cancelled; a reserved one is flagged for its
        worker, whose heartbeat reads the flag (cancelled_among) and cancels the task."""
        rows = yield fetch(JOB_BY_UUID + self._lock_held, (job_uuid,))
        if not rows:
            return ""
        row_id, queue, payload, attempts, state, available_at, _, _, now = rows[0]
        if int(state) == 2 and int(available_at) > int(now):   # a lapsed reservation (a dead worker's) is pending
            yield change(FLAG_CANCEL, (row_id,))
            return "reserved"
        yield change(DELETE_ONE, (row_id,))
        status = from_payload(job_uuid, "cancelled", queue, payload)
        record = json.dumps({"state": "cancelled", "job": status.job, "queue": queue, "attempts": int(attempts),
                             "max_tries": status.max_tries, "dispatched_at": status.dispatched_at,
                             "keep_result": status.keep_result})
        yield from self._result_steps(job_uuid, queue, "cancelled",
                                      KeptResult(record, max(CANCEL_KEEP, status.keep_result)))
        yield from self._remember_steps([job_uuid])
        return "cancelled"

    async def cancelled_among(self, jobs: Sequence[ReservedJob]) -> list[str]:
        """The ids of held jobs someone asked to cancel (extend() answers the same with each renewal)."""
        if not jobs:
            return []
        return await self.db.run_transaction(self._cancelled_steps(jobs))

    def _cancelled_steps(self, jobs: Sequence[ReservedJob]) -> Steps[list[str]]:
        if not jobs:
            return []
        rows = yield fetch(CANCELLED_OF + _marks(len(jobs)), [int(job.id) for job in jobs])
        return [str(row_id) for (row_id,) in rows]

    async def set_progress(self, job: ReservedJob, fraction: float, text: str) -> bool:
        attempts, _, claim = job.token.partition(":")
        progress = f"{fraction:g} {text}"[:1000]
        return await self.db.execute(SET_PROGRESS, (progress, int(job.id), int(attempts), claim)) == 1


def _queued(job_id: str | None, row: Sequence[Any]) -> JobStatus:
    _, queue, payload, attempts, state, available_at, last_error, progress, now = row
    name = {0: "pending", 1: "delayed", 2: "reserved"}.get(int(state), "pending")
    if name == "delayed" and int(available_at) <= int(now):
        name = "pending"
    elif name == "reserved" and int(available_at) <= int(now):
        name = "pending"        # its reservation lapsed (a dead worker's job): no one holds it, it is due again
    return from_payload(job_id or peek_uuid(payload) or "", name, queue, payload, attempts=int(attempts),
                        available_at=float(available_at) if name == "delayed" else None,
                        last_error=last_error, progress=parse_progress(progress))

