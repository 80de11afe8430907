"""FailedJobStore: the failed_jobs table, always in the database of DB_CONNECTION."""
from __future__ import annotations

import json
import uuid as uuid_module
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from core.database import Database, Session
from core.log import one_line
from core.payload import peek_uuid

SCHEMA = {
    "sqlite": """CREATE TABLE IF NOT EXISTS failed_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid VARCHAR(255) NOT NULL UNIQUE,
        connection TEXT NOT NULL,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL,
        exception TEXT NOT NULL,
        failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)""",
    "mysql": """CREATE TABLE IF NOT EXISTS failed_jobs (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        uuid VARCHAR(255) NOT NULL,
        connection TEXT NOT NULL,
        queue TEXT NOT NULL,
        payload LONGTEXT NOT NULL,
        exception LONGTEXT NOT NULL,
        failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        UNIQUE KEY failed_jobs_uuid_unique (uuid)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
}

# A job failed twice (a crashed worker's job recorded again) keeps one row, with the newest failure.
INSERT = {
    "sqlite": """INSERT INTO failed_jobs (uuid, connection, queue, payload, exception, failed_at)
        VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(uuid) DO UPDATE SET connection = excluded.connection,
        queue = excluded.queue, payload = excluded.payload, exception = excluded.exception,
        failed_at = excluded.failed_at""",
    "mysql": """INSERT INTO failed_jobs (uuid, connection, queue, payload, exception, failed_at)
        VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE connection = VALUES(connection),
        queue = VALUES(queue), payload = VALUES(payload), exception = VALUES(exception),
        failed_at = VALUES(failed_at)""",
}
SELECT = "SELECT uuid, connection, queue, payload, exception, failed_at FROM failed_jobs"
_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class FailedJob:
    uuid: str
    connection: str
    queue: str
    payload: str
    exception: str
    failed_at: datetime

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

    async def migrate(self) -> None:
        await self.db.execute(SCHEMA[self.db.dialect])

    async def record(self, connection: str, queue: str, payload: str, exception: str,
                     session: Session | None = None) -> str:
        """Write one failed job (inside `session`'s transaction when given); returns its uuid."""
        job_uuid = peek_uuid(payload) or str(uuid_module.uuid4())
        params = (job_uuid, connection, queue, storable(payload), storable(exception),
                  datetime.now(timezone.utc).strftime(_TIME))
        sql = INSERT[self.db.dialect]
        if session is not None:
            await session.execute(sql, params)
        else:
            await self.db.execute(sql, params)
        return job_uuid

    async def all(self, queue: str | None = None) -> list[FailedJob]:
        if queue is None:
            rows = await self.db.fetchall(SELECT + " ORDER BY id")
        else:
            rows = await self.db.fetchall(SELECT + " WHERE queue = ? ORDER BY id", (queue,))
        return [_row(r) for r in rows]

    async def find(self, job_uuid: str) -> FailedJob | None:
        row = await self.db.fetchone(SELECT + " WHERE uuid = ?", (job_uuid,))
        return _row(row) if row else None

    async def forget(self, job_uuid: str, session: Session | None = None) -> bool:
        sql, params = "DELETE FROM failed_jobs WHERE uuid = ?", (job_uuid,)
        count = await (session.execute(sql, params) if session else self.db.execute(sql, params))
        return count > 0

    async def flush(self, older_than_hours: float | None = None) -> int:
        if older_than_hours is None:
            return await self.db.execute("DELETE FROM failed_jobs")
        cutoff = datetime.now(timezone.utc) - timedelta(hours=older_than_hours)
        return await self.db.execute("DELETE FROM failed_jobs WHERE failed_at < ?", (cutoff.strftime(_TIME),))


def storable(text: str) -> str:
    """Text the database can hold: bytes and lone surrogates (bytes that were not UTF-8, read from
    Redis) become U+FFFD, so a broken payload is still recorded rather than failing the insert."""
    if isinstance(text, (bytes, bytearray)):       # a BLOB someone wrote into the jobs table
        return bytes(text).decode("utf-8", "replace")
    if isinstance(text, str) and not text.isascii():
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return str(text)


def _row(row: tuple) -> FailedJob:
    uuid_, connection, queue, payload, exception, failed_at = row
    if isinstance(failed_at, str):
        failed_at = datetime.strptime(failed_at[:19], _TIME)
    return FailedJob(uuid_, connection, queue, payload, exception, failed_at.replace(tzinfo=timezone.utc))
