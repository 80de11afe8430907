"""The database connection: Laravel's `jobs` table on SQLite or MySQL/MariaDB.

A reservation is fenced by (id, attempts): every reserve increments attempts, and ids are never
reused (AUTOINCREMENT), so a worker whose reservation expired and was taken over no longer
matches its own row and cannot delete or release the new holder's job.
"""
from __future__ import annotations

from collections.abc import Sequence

from core.database import Database, Session
from core.queue.contract import QueueConnection, QueueSize, ReservedJob
from core.queue.failed import FailedJobStore

SCHEMA = {
    "sqlite": [
        """CREATE TABLE IF NOT EXISTS jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            queue VARCHAR(255) NOT NULL,
            payload TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            reserved_at INTEGER NULL,
            available_at INTEGER NOT NULL,
            created_at INTEGER NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS jobs_queue_index ON jobs (queue, id)",
        "CREATE TABLE IF NOT EXISTS queue_signals (name VARCHAR(64) PRIMARY KEY, value DOUBLE NOT NULL)",
    ],
    "mysql": [
        """CREATE TABLE IF NOT EXISTS jobs (
            id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
            queue VARCHAR(255) NOT NULL,
            payload LONGTEXT NOT NULL,
            attempts INT UNSIGNED NOT NULL DEFAULT 0,
            reserved_at INT UNSIGNED NULL,
            available_at INT UNSIGNED NOT NULL,
            created_at INT UNSIGNED NOT NULL,
            INDEX jobs_queue_index (queue)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
        """CREATE TABLE IF NOT EXISTS queue_signals (
            name VARCHAR(64) NOT NULL PRIMARY KEY, value DOUBLE NOT NULL) ENGINE=InnoDB""",
    ],
}

PUSH = ("INSERT INTO jobs (queue, payload, attempts, reserved_at, available_at, created_at) "
        "VALUES (?, ?, 0, NULL, {now}, {now})")
PUSH_DELAYED = ("INSERT INTO jobs (queue, payload, attempts, reserved_at, available_at, created_at) "
                "VALUES (?, ?, 0, NULL, {due}, {now})")
PUSH_ROW = "(?, ?, 0, NULL, ?, ?)"
PUSH_MANY = "INSERT INTO jobs (queue, payload, attempts, reserved_at, available_at, created_at) VALUES "
NOW = "SELECT {now}, {due}"
# A due job, or one whose reservation outlived the visibility timeout (its worker died).
NEXT = ("SELECT id, payload, attempts FROM jobs WHERE queue = ? AND "
        "((reserved_at IS NULL AND available_at <= {now}) OR reserved_at < {now} - ?) "
        "ORDER BY id LIMIT ?")
SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
MARK_RESERVED = "UPDATE jobs SET reserved_at = {now}, attempts = attempts + 1 WHERE id IN "
DELETE_HELD = "DELETE FROM jobs WHERE id = ? AND attempts = ? AND reserved_at IS NOT NULL"
RELEASE_HELD = ("UPDATE jobs SET reserved_at = NULL, available_at = {now} "
                "WHERE id = ? AND attempts = ? AND reserved_at IS NOT NULL")
RELEASE_HELD_DELAYED = ("UPDATE jobs SET reserved_at = NULL, available_at = {due} "
                        "WHERE id = ? AND attempts = ? AND reserved_at IS NOT NULL")
HELD_OF = "SELECT id, attempts FROM jobs WHERE reserved_at IS NOT NULL AND id IN "
DELETE_IDS = "DELETE FROM jobs WHERE id IN "
EXTEND_HELD = "UPDATE jobs SET reserved_at = {now} WHERE id = ? AND attempts = ? AND reserved_at IS NOT NULL"
SIZES = ("SELECT queue, "
         "SUM(CASE WHEN reserved_at IS NULL AND available_at <= {now} THEN 1 ELSE 0 END), "
         "SUM(CASE WHEN reserved_at IS NULL AND available_at > {now} THEN 1 ELSE 0 END), "
         "SUM(CASE WHEN reserved_at IS NOT NULL THEN 1 ELSE 0 END) FROM jobs")
CLEAR = "DELETE FROM jobs WHERE queue = ? AND reserved_at IS NULL"
SIGNAL_GET = "SELECT value FROM queue_signals WHERE name = ?"
# A counter, bumped in one statement: no clock is read, so workers on skewed hosts agree.
SIGNAL_BUMP = {
    "sqlite": "INSERT INTO queue_signals (name, value) VALUES (?, 1) "
              "ON CONFLICT(name) DO UPDATE SET value = queue_signals.value + 1",
    "mysql": "INSERT INTO queue_signals (name, value) VALUES (?, 1) ON DUPLICATE KEY UPDATE value = value + 1",
}
BULK_ROWS = 500
STORED = "SELECT payload FROM jobs WHERE queue = ? AND payload IN "


class DatabaseQueue(QueueConnection):
    name = "database"

    def __init__(self, db: Database, failed: FailedJobStore, visibility_timeout: int = 90) -> None:
        self.db = db
        self.failed = failed
        self.visibility_timeout = visibility_timeout

    async def open(self) -> None:
        await self.migrate()

    async def migrate(self) -> None:
        for statement in SCHEMA[self.db.dialect]:
            await self.db.execute(statement)
        await self.failed.migrate()

    def describe(self) -> str:
        return self.db.describe()

    def connection_error(self, exc: BaseException) -> str | None:
        return self.db.connection_error(exc)

    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        async with self.db.session() as session:
            await self.push_in(session, queue, payload, delay)

    async def push_in(self, tx: Session, queue: str, payload: str, delay: float = 0) -> None:
        """Push inside a caller's transaction on the same database."""
        if delay > 0:
            await tx.execute(PUSH_DELAYED, (queue, payload, float(delay)))
        else:
            await tx.execute(PUSH, (queue, payload))

    async def push_many(self, queue: str, payloads: Sequence[str], delay: float = 0) -> None:
        async with self.db.transaction() as tx:
            now, due = await tx.fetchone(NOW, (float(delay),))
            available = int(due) if delay > 0 else int(now)
            for start in range(0, len(payloads), BULK_ROWS):
                chunk = payloads[start:start + BULK_ROWS]
                params: list = []
                for payload in chunk:
                    params += [queue, payload, available, int(now)]
                await tx.execute(PUSH_MANY + ", ".join([PUSH_ROW] * len(chunk)), params)

    async def push_missing(self, queue: str, payloads: Sequence[str], delay: float = 0) -> None:
        """An insert whose answer was lost may have committed: look for the payloads (each holds
        its job's uuid) before inserting them again. Only a retried dispatch pays for this look."""
        stored: set[str] = set()
        for start in range(0, len(payloads), BULK_ROWS):
            chunk = payloads[start:start + BULK_ROWS]
            rows = await self.db.fetchall(STORED + "(" + ", ".join("?" for _ in chunk) + ")", [queue, *chunk])
            stored.update(payload for (payload,) in rows)
        missing = [payload for payload in payloads if payload not in stored]
        if missing:
            await self.push_many(queue, missing, delay)

    async def reserve(self, queues: Sequence[str]) -> ReservedJob | None:
        jobs = await self.reserve_many(queues, 1)
        return jobs[0] if jobs else None

    async def reserve_many(self, queues: Sequence[str], limit: int) -> list[ReservedJob]:
        next_sql = NEXT + (SKIP_LOCKED if self.db.dialect == "mysql" else "")
        taken: list[ReservedJob] = []
        async with self.db.transaction() as tx:
            for queue in queues:
                rows = await tx.fetchall(next_sql, (queue, self.visibility_timeout, limit - len(taken)))
                if rows:
                    await tx.execute(MARK_RESERVED + "(" + ", ".join("?" for _ in rows) + ")",
                                     [job_id for job_id, _, _ in rows])
                    taken += [ReservedJob(id=str(job_id), queue=queue, payload=payload, attempts=int(attempts) + 1,
                                          token=str(int(attempts) + 1)) for job_id, payload, attempts in rows]
                if len(taken) >= limit:
                    break
        return taken

    async def acknowledge(self, job: ReservedJob) -> bool:
        return await self.db.execute(DELETE_HELD, (int(job.id), int(job.token))) == 1

    async def acknowledge_many(self, jobs: Sequence[ReservedJob]) -> list[bool]:
        """One transaction: lock the rows still held under these reservations, delete those."""
        if not jobs:
            return []
        marks = "(" + ", ".join("?" for _ in jobs) + ")"
        async with self.db.transaction() as tx:
            rows = await tx.fetchall(HELD_OF + marks + (" FOR UPDATE" if self.db.dialect == "mysql" else ""),
                                     [int(job.id) for job in jobs])
            held = {(str(job_id), str(attempts)) for job_id, attempts in rows}
            done = [(job.id, job.token) in held for job in jobs]
            mine = [int(job.id) for job, ok in zip(jobs, done) if ok]
            if mine:
                await tx.execute(DELETE_IDS + "(" + ", ".join("?" for _ in mine) + ")", mine)
        return done

    async def release(self, job: ReservedJob, delay: float = 0) -> bool:
        if delay > 0:
            return await self.db.execute(RELEASE_HELD_DELAYED, (float(delay), int(job.id), int(job.token))) == 1
        return await self.db.execute(RELEASE_HELD, (int(job.id), int(job.token))) == 1

    async def fail(self, job: ReservedJob, exception: str) -> bool:
        async with self.db.transaction() as tx:
            return await self._fail_in(tx, job, exception)

    async def _fail_in(self, tx: Session, job: ReservedJob, exception: str) -> bool:
        if await tx.execute(DELETE_HELD, (int(job.id), int(job.token))) != 1:
            return False
        await self.failed.record(self.name, job.queue, job.payload, exception, session=tx)
        return True

    async def extend(self, jobs: Sequence[ReservedJob]) -> None:
        if not jobs:
            return
        async with self.db.transaction() as tx:
            for job in jobs:
                await tx.execute(EXTEND_HELD, (int(job.id), int(job.token)))

    async def sizes(self, queues: Sequence[str] | None = None) -> dict[str, QueueSize]:
        if queues:
            marks = ", ".join("?" for _ in queues)
            rows = await self.db.fetchall(SIZES + f" WHERE queue IN ({marks}) GROUP BY queue", list(queues))
        else:
            rows = await self.db.fetchall(SIZES + " GROUP BY queue ORDER BY queue")
        found = {q: QueueSize(int(p or 0), int(d or 0), int(r or 0)) for q, p, d, r in rows}
        return {q: found.get(q, QueueSize()) for q in queues} if queues else found

    async def clear(self, queue: str) -> int:
        return await self.db.execute(CLEAR, (queue,))

    async def request_restart(self) -> None:
        await self.db.execute(SIGNAL_BUMP[self.db.dialect], ("restart",))

    async def restart_signal(self) -> str:
        row = await self.db.fetchone(SIGNAL_GET, ("restart",))
        return repr(float(row[0])) if row else ""
