"""FailedJobStore: the failed_jobs table, always in the database of DB_CONNECTION."""
from __future__ import annotations

import itertools
import json
import uuid as uuid_module
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core.database import Database, Session, Steps, change, fetch
from core.log import one_line
from core.payload import peek_uuid, valid_id

# The dialect fills in {id}, {longtext} and {table} (core/dialects.py).
SCHEMA = """CREATE TABLE IF NOT EXISTS failed_jobs (
    id {id},
    uuid VARCHAR(255) NOT NULL,
    connection TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload {longtext} NOT NULL,
    exception {longtext} NOT NULL,
    failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    attempts INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT failed_jobs_uuid_unique UNIQUE (uuid)){table}"""
# Laravel's columns, then ours: `attempts`, the tries the job had when it failed (SPEC 11's status).
# A table made by an earlier release gets it from migrate (or the first use); its rows read 0.
ADD_ATTEMPTS = "ALTER TABLE failed_jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"

# Insert unless the uuid has a row; never overwrite one: a payload carrying the uuid of another
# failed job (forged, unsigned) must not replace the payload queue:retry needs.
INSERT_NEW = """INSERT INTO failed_jobs (uuid, connection, queue, payload, exception, failed_at, attempts)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
# The row now under a uuid, read locking where the database locks rows (MySQL), so a row committed
# after this transaction's snapshot is seen too.
PAYLOAD_OF = "SELECT payload FROM failed_jobs WHERE uuid = ?"
FORGET = "DELETE FROM failed_jobs WHERE uuid = ?"
# queue:retry forgets the row it read, not a newer failure of the job it pushed back (record()).
FORGET_ROW = FORGET + " AND id = ?"
SELECT = "SELECT uuid, connection, queue, payload, exception, failed_at, attempts, id FROM failed_jobs"
_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class FailedJob:
    uuid: str
    connection: str
    queue: str
    payload: str
    exception: str
    failed_at: datetime
    attempts: int = 0       # tries it had when it failed (0: recorded by an earlier release)
    row_id: int | None = None   # the failed_jobs row's own id: which failure of the job this is

    @property
    def job_class(self) -> str:
        """The class the payload names, printable: a forged payload may name anything, or be unreadable."""
        try:
            job = json.loads(self.payload).get("job", "?")
        except (ValueError, TypeError, AttributeError, RecursionError):
            return "?"
        return one_line(job, 120) if isinstance(job, str) else "?"

    @property
    def summary(self) -> str:
        return self.exception.strip().splitlines()[0] if self.exception.strip() else ""

    def as_dict(self) -> dict[str, str]:
        return {"id": self.uuid, "connection": self.connection, "queue": self.queue, "job": self.job_class,
                "exception": self.summary, "failed_at": self.failed_at.isoformat().replace("+00:00", "Z")}


class FailedJobStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert_new = INSERT_NEW + db.dialect.ignore_duplicate("uuid")
        self._payload_of = PAYLOAD_OF + db.dialect.for_update

    async def migrate(self) -> None:
        dialect = self.db.dialect
        await self.db.execute_ddl(dialect.ddl(SCHEMA))
        await self.db.ensure("failed_jobs", "attempts", dialect.column_names, ADD_ATTEMPTS)

    async def record(self, connection: str, queue: str, payload: str, exception: str,
                     session: Session | None = None, attempts: int = 0, job_id: str | None = None) -> str:
        """Write one failed job (inside `session`'s transaction when given); returns the uuid it is under.

        The payload's own uuid when that is free, or already holds this same payload (the same
        failure recorded again, or the job failed again: one row, written anew); a payload that differs is recorded
        under a fresh uuid, so no row is ever overwritten. Safe to repeat. `job_id`: the id the
        store knew the job by, for a payload with no readable uuid of its own (not JSON)."""
        steps = self.record_steps(connection, queue, payload, exception, attempts, job_id)
        return await (session.run(steps) if session else self.db.run_transaction(steps))

    def record_steps(self, connection: str, queue: str, payload: str, exception: str,
                     attempts: int = 0, job_id: str | None = None) -> Steps[str]:
        """record() as transaction steps (core.database), to run inside another transaction's."""
        stored = storable(payload)
        row = (connection, queue, stored, storable(exception), self.db.dialect.timestamp(datetime.now(timezone.utc)),
               attempts)
        # No readable id: the store's (the one dispatched and logged), else a random one, as two such
        # jobs may hold the same bytes and are two failures.
        job_uuid: str | None = peek_uuid(payload) or (job_id if valid_id(job_id) else None) or str(uuid_module.uuid4())
        for n in itertools.count():
            job_uuid = job_uuid or _derived_uuid(stored, n)
            inserted = yield change(self._insert_new, (job_uuid, *row))
            found = yield fetch(self._payload_of, (job_uuid,))
            if found and found[0][0] == stored:
                if inserted != 1 or self.db.dialect.counts_found_rows:
                    # The same job failed again: its row is written anew (a new id), so a queue:retry that
                    # pushed the job back before this failure, and forgets the row it read only now,
                    # leaves this one. Kept as it was, that forget deleted the only record of a job
                    # already gone from its queue.
                    yield change(FORGET, (job_uuid,))
                    yield change(self._insert_new, (job_uuid, *row))
                return job_uuid
            job_uuid = None          # that uuid holds another job's failure: leave it as it is
        raise AssertionError("unreachable")

    async def all(self, queue: str | None = None) -> list[FailedJob]:
        if queue is None:
            rows = await self.db.fetchall(SELECT + " ORDER BY id")
        else:
            rows = await self.db.fetchall(SELECT + " WHERE queue = ? ORDER BY id", (queue,))
        return [_row(r) for r in rows]

    async def latest(self, limit: int, queue: str | None = None) -> list[FailedJob]:
        """The `limit` most recent failed jobs (queue:jobs --state failed): bounded by the limit."""
        where, params = ("", [limit]) if queue is None else (" WHERE queue = ?", [queue, limit])
        return [_row(r) for r in await self.db.fetchall(SELECT + where + " ORDER BY id DESC LIMIT ?", params)]

    async def find(self, job_uuid: str) -> FailedJob | None:
        row = await self.db.fetchone(SELECT + " WHERE uuid = ?", (job_uuid,))
        return _row(row) if row else None

    async def forget(self, job_uuid: str, session: Session | None = None, row_id: int | None = None) -> bool:
        """Delete the job's failed row; with `row_id`, only that row (the failure a queue:retry read)."""
        return await (session or self.db).execute(*_forget(job_uuid, row_id)) > 0

    def forget_steps(self, job_uuid: str, row_id: int | None = None) -> Steps[bool]:
        """forget() as transaction steps, to run inside another transaction's (queue:retry)."""
        return (yield change(*_forget(job_uuid, row_id))) > 0

    async def flush(self, older_than_hours: float | None = None) -> int:
        if older_than_hours is None:
            return await self.db.execute("DELETE FROM failed_jobs")
        cutoff = datetime.now(timezone.utc) - timedelta(hours=older_than_hours)
        before = self.db.dialect.timestamp(cutoff)
        return await self.db.execute("DELETE FROM failed_jobs WHERE failed_at < ?", (before,))


def _derived_uuid(payload: str, n: int) -> str:
    """A uuid for a payload whose own is taken by another job's row: made from the payload, so
    recording the same one again finds its row instead of adding a second."""
    return str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, f"failed-job:{n}:{payload}"))


def storable(text: str) -> str:
    """Text the database can hold: bytes and lone surrogates (bytes that were not UTF-8, read from
    Redis) become U+FFFD, so a broken payload is still recorded rather than failing the insert."""
    if isinstance(text, (bytes, bytearray)):       # a BLOB someone wrote into the jobs table
        return bytes(text).decode("utf-8", "replace")
    if isinstance(text, str) and not text.isascii():
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return str(text)


def _forget(job_uuid: str, row_id: int | None) -> tuple[str, tuple]:
    return (FORGET, (job_uuid,)) if row_id is None else (FORGET_ROW, (job_uuid, row_id))


def _row(row: tuple) -> FailedJob:
    uuid_, connection, queue, payload, exception, failed_at, attempts, row_id = row
    if isinstance(failed_at, str):
        failed_at = datetime.strptime(failed_at[:19], _TIME)
    return FailedJob(uuid_, connection, queue, payload, exception, failed_at.replace(tzinfo=timezone.utc),
                     int(attempts or 0), int(row_id))
