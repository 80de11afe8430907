"""The database connection: Laravel's `jobs` table on SQLite or MySQL/MariaDB.

A reservation is fenced by (id, attempts, claim): every reserve increments attempts and writes
its call's claim (random), and ids are never reused (AUTOINCREMENT), so a worker whose
reservation expired and was taken over (or whose job queue:retry took back) no longer matches its
own row and cannot delete or release the new holder's job. The token is "attempts:claim".

Each row has a `state` (READY, DELAYED, RESERVED) so that every step of a reserve is a range of
one index, (queue, state, available_at), whatever else the table holds: due DELAYED rows and
lapsed RESERVED rows are made READY (their available_at set to 0, so READY rows sort by id, in
dispatch order), then the first READY rows are taken. A RESERVED row's available_at is when its
reservation lapses. Rows written by an older release (state READY, any available_at) are still
read correctly, through the available_at and reserved_at filters.

A finished job's uuid is kept in `finished_jobs` for `replay_window` seconds, written in the
transaction that deletes the job (acknowledge, fail): a repeated push of it is dropped when
reserved, and a retried dispatch (push_missing) does not store it again.

SPEC 9: `releases` counts releases that were not failed tries (release(free=True), in the same
statement); `created_at` (the database's clock) and `due_at` (a delayed push's due time, NULL:
created_at) give a reserved job its push and due times; queue:retry resets and restarts them.
The middleware's own tables are state_database.py's.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterator, Sequence

from core.database import Database, Statement, Steps, change, fetch
from core.errors import ConnectionFailed
from core.payload import peek_priority, peek_uuid
from core.queue.contract import QueueAdmin, QueueConnection, QueueSize, ReservedJob
from core.queue.database_status import DatabaseJobs, fence, held_arrays
from core.queue.failed import FailedJob, FailedJobStore, storable
from core.queue.state_database import DatabaseState

log = logging.getLogger("worker")

READY, DELAYED, RESERVED = 0, 1, 2

# DDL written once; the dialect fills in {id}, {uint}, {flag}, {longtext}, {double}, {table}, {keyed_table}.
TABLES = [
    """CREATE TABLE IF NOT EXISTS jobs (
        id {id},
        queue VARCHAR(255) NOT NULL,
        payload {longtext} NOT NULL,
        attempts {uint} NOT NULL DEFAULT 0,
        reserved_at {uint} NULL,
        available_at {uint} NOT NULL,
        created_at {uint} NOT NULL,
        uuid VARCHAR(255) NULL,
        state {flag} NOT NULL DEFAULT 0,
        claim VARCHAR(255) NULL,
        failing {longtext} NULL,
        failed_ran {flag} NOT NULL DEFAULT 0){table}""",
    """CREATE TABLE IF NOT EXISTS finished_jobs (
        uuid VARCHAR(255) NOT NULL PRIMARY KEY, finished_at {uint} NOT NULL){keyed_table}""",
    "CREATE TABLE IF NOT EXISTS queue_signals (name VARCHAR(64) NOT NULL PRIMARY KEY, value {double} NOT NULL){table}",
    # SPEC 11: a finished job's record (state, return value...), kept until expires_at.
    """CREATE TABLE IF NOT EXISTS job_results (
        uuid VARCHAR(255) NOT NULL PRIMARY KEY, queue VARCHAR(255) NOT NULL, state VARCHAR(20) NOT NULL,
        record {longtext} NOT NULL, finished_at {uint} NOT NULL, expires_at {uint} NOT NULL){keyed_table}""",
]
# Columns a table from the previous release lacks, added by migrate (and the first open).
COLUMNS = {"uuid": "VARCHAR(255) NULL", "state": "{flag} NOT NULL DEFAULT 0", "claim": "VARCHAR(255) NULL",
           "failing": "{longtext} NULL", "failed_ran": "{flag} NOT NULL DEFAULT 0",
           # SPEC 9: releases that are not failed tries, and when a delayed push came due (NULL: at
           # created_at, the push time on the database's clock).
           "releases": "{uint} NOT NULL DEFAULT 0", "due_at": "{uint} NULL",
           # SPEC 11: minus the job's priority (lower runs first: MariaDB's descending indexes skip rows
           # under SKIP LOCKED, so the index stays ascending); the last failed try's first line; progress;
           # a cancel request.
           "priority_rank": "SMALLINT NOT NULL DEFAULT 0", "last_error": "VARCHAR(1000) NULL",
           "progress": "VARCHAR(1000) NULL", "cancelled": "{flag} NOT NULL DEFAULT 0"}
# (table, index name, DDL). READY rows (available_at 0) come out by priority, then id (SPEC 11):
# the reserve index ends with the id where the database's index entries do not already (see
# RESERVE_INDEX_WITH_ID).
RESERVE_INDEX = ("jobs", "jobs_reserve_priority_index",
                 "CREATE INDEX jobs_reserve_priority_index ON jobs (queue, state, available_at, priority_rank)")
# PostgreSQL's index entries end with the row's place in the table, not its id (MySQL's and SQLite's
# end with the primary key): without the id as a column, "ORDER BY available_at, priority_rank, id
# LIMIT n" read and sorted every READY row of the queue at each reserve (65 ms for 100 of 10,000;
# a drain of N jobs read N^2 / n rows); with it a reserve reads its n rows in index order (3.7 ms).
RESERVE_INDEX_WITH_ID = ("jobs", "jobs_reserve_order_index",
                         "CREATE INDEX jobs_reserve_order_index ON jobs "
                         "(queue, state, available_at, priority_rank, id)")
INDEXES = [
    ("jobs", "jobs_uuid_unique", "CREATE UNIQUE INDEX jobs_uuid_unique ON jobs (uuid)"),
    ("finished_jobs", "finished_jobs_finished_at_index",
     "CREATE INDEX finished_jobs_finished_at_index ON finished_jobs (finished_at)"),
    ("job_results", "job_results_expires_at_index",
     "CREATE INDEX job_results_expires_at_index ON job_results (expires_at)"),
]
# Earlier releases' reserve indexes, (queue, id) and (queue, state, available_at): dropped, as
# the reserve index serves every reserve now (on PostgreSQL, jobs_reserve_priority_index too).
OLD_INDEXES = ("jobs_queue_index", "jobs_reserve_index")
# Rows of the previous release, once: reserved ones lapse at reserved_at + the visibility timeout,
# future ones are DELAYED, due ones READY at their id's place.
ADOPT_RESERVED = "UPDATE jobs SET state = 2, available_at = reserved_at + ? WHERE reserved_at IS NOT NULL AND state = 0"
ADOPT_DELAYED = "UPDATE jobs SET state = 1 WHERE reserved_at IS NULL AND state = 0 AND available_at > {now}"
ADOPT_READY = "UPDATE jobs SET available_at = 0 WHERE reserved_at IS NULL AND state = 0"

PUSH_COLUMNS = "INSERT INTO jobs (queue, payload, attempts, available_at, created_at, uuid, state, due_at) VALUES "
PUSH = PUSH_COLUMNS + "(?, ?, 0, 0, {now}, ?, 0, NULL)"
PUSH_DELAYED = PUSH_COLUMNS + "(?, ?, 0, {due}, {now}, ?, 1, {due})"
PUSH_ROW = "(?, ?, 0, ?, ?, ?, ?, ?)"
# A job with a priority (SPEC 11) names the column; a default job's insert stays as it was.
PUSH_COLUMNS_RANKED = PUSH_COLUMNS.replace("due_at)", "due_at, priority_rank)")
PUSH_RANKED = PUSH_COLUMNS_RANKED + "(?, ?, 0, 0, {now}, ?, 0, NULL, ?)"
PUSH_DELAYED_RANKED = PUSH_COLUMNS_RANKED + "(?, ?, 0, {due}, {now}, ?, 1, {due}, ?)"
PUSH_ROW_RANKED = "(?, ?, 0, ?, ?, ?, ?, ?, ?)"
NOW = "SELECT {now}, {due}"
# Due DELAYED rows and lapsed RESERVED rows (their worker died), to become READY at their id's place.
# reserved_at is checked too: a row an older release's worker holds and extends is not taken from it.
# Locked with SKIP LOCKED then updated by id: an UPDATE over the range would wait for row locks in
# index order while an acknowledge holds them in id order (MySQL error 1213, deadlock).
DUE = ("SELECT id FROM jobs WHERE queue IN {marks} AND state IN (1, 2) AND available_at <= {now} "
       "AND (state = 1 OR reserved_at IS NULL OR reserved_at < {now} - ?)")
PROMOTE = "UPDATE jobs SET state = 0, available_at = 0, reserved_at = NULL WHERE id IN "
# The first READY rows, each with whether it already ran (its uuid is remembered). A subquery, not
# a join: the rows still come in index order (no sort), and FOR UPDATE does not lock the record.
# "finished_at + ?" so that the record is found by its uuid (primary key), never by a finished_at range.
# available_at and reserved_at filter only rows an older release wrote or reserved.
# What a ReservedJob carries after failed_ran: releases, pushed_at, due_at, and the clock now.
TIMING = "j.releases, j.created_at, COALESCE(j.due_at, j.created_at), {now}"
PICK = ("SELECT j.id, j.payload, j.attempts, j.failing, j.failed_ran, j.uuid, EXISTS (SELECT 1 FROM finished_jobs f "
        "WHERE f.uuid = j.uuid AND f.finished_at + ? >= {now}), " + TIMING + " FROM jobs j "
        "WHERE j.queue = ? AND j.state = 0 AND j.available_at <= {now} "
        "AND (j.reserved_at IS NULL OR j.reserved_at < {now} - ?) "
        "ORDER BY j.available_at, j.priority_rank, j.id LIMIT ?")
MARK_RESERVED = ("UPDATE jobs SET state = 2, reserved_at = {now}, available_at = {due}, attempts = attempts + 1, "
                 "claim = ? WHERE id IN ")
# Where UPDATE takes a subquery on its own table and answers with RETURNING (PostgreSQL), promote and
# reserve are one statement each, which needs no transaction: the subquery's rows are locked (SKIP
# LOCKED) and changed by the statement that picked them.
PROMOTE_DUE = "UPDATE jobs SET state = 0, available_at = 0, reserved_at = NULL WHERE id IN ("
TAKE = ("UPDATE jobs j SET state = 2, reserved_at = {now}, available_at = {due}, attempts = attempts + 1, claim = ? "
        "WHERE {relaxed}j.id IN (SELECT id FROM jobs WHERE queue = ? AND state = 0 AND available_at <= {now} "
        "AND (reserved_at IS NULL OR reserved_at < {now} - ?) "
        "ORDER BY available_at, priority_rank, id LIMIT ?{skip_locked}) "
        "RETURNING j.id, j.payload, j.attempts, j.failing, j.failed_ran, j.uuid, EXISTS (SELECT 1 FROM finished_jobs f "
        "WHERE f.uuid = j.uuid AND f.finished_at + ? >= {now}), " + TIMING)
# ... and an acknowledgement is one statement: the held rows deleted, their uuids remembered
# (data-modifying CTEs). Its parameters are four arrays, one element per job: ids, attempts, claims,
# uuids (the payloads'). One text for any number of jobs, so it is parsed and planned once per
# connection; a VALUES row per job made a statement per batch size, prepared again and again.
# {columns}, {arrays} and {also}: more of each held row, and more statements on the rows gone
# (database_status.py: the results kept with the acknowledgement, in the same statement).
ACKNOWLEDGE = ("WITH held (id, attempts, claim, uuid{columns}) AS (SELECT * FROM unnest(CAST(? AS BIGINT[]), "
               "CAST(? AS BIGINT[]), CAST(? AS VARCHAR(255)[]), CAST(? AS VARCHAR(255)[]){arrays})), "
               "gone AS (DELETE FROM jobs j USING held h WHERE j.id = h.id AND j.attempts = h.attempts "
               "AND j.claim = h.claim AND j.reserved_at IS NOT NULL RETURNING j.id, j.attempts, j.claim, "
               "COALESCE(j.uuid, h.uuid) AS uuid), "
               "kept AS (INSERT INTO finished_jobs (uuid, finished_at) SELECT DISTINCT uuid, {now} FROM gone "
               "WHERE uuid IS NOT NULL{upsert}){also} SELECT id, attempts, claim FROM gone")
HELD = "id = ? AND attempts = ? AND claim = ? AND reserved_at IS NOT NULL"
DELETE_HELD = "DELETE FROM jobs WHERE " + HELD
UUID_OF = "SELECT uuid FROM jobs WHERE id = ?"
RELEASE_HELD = ("UPDATE jobs SET state = 0, reserved_at = NULL, available_at = 0, claim = NULL, failing = NULL, "
                "failed_ran = 0 WHERE " + HELD)
RELEASE_HELD_DELAYED = ("UPDATE jobs SET state = 1, reserved_at = NULL, available_at = {due}, claim = NULL, "
                        "failing = NULL, failed_ran = 0 WHERE " + HELD)
# A release that is not a failed try (SPEC 9) counts itself in the same statement.
RELEASE_FREE = RELEASE_HELD.replace("SET ", "SET releases = releases + 1, ", 1)
RELEASE_FREE_DELAYED = RELEASE_HELD_DELAYED.replace("SET ", "SET releases = releases + 1, ", 1)
# A job reserved but never started (its worker was stopping) takes its attempt back.
UNRESERVE = RELEASE_HELD.replace("SET ", "SET attempts = attempts - 1, ", 1)
# A failed try's release notes its exception's first line (SPEC 11: status shows last_error).
RELEASE_ERROR = RELEASE_HELD.replace("SET ", "SET last_error = ?, ", 1)
RELEASE_ERROR_DELAYED = RELEASE_HELD_DELAYED.replace("SET ", "SET last_error = ?, ", 1)
EXTEND_HELD = "UPDATE jobs SET reserved_at = {now}, available_at = {due} WHERE " + HELD
# The held rows a renewal may change now: with SKIP LOCKED, those no other transaction holds.
RENEWABLE = "SELECT id FROM jobs WHERE id IN "
MARK_FAILING = ("UPDATE jobs SET failing = ?, failed_ran = ?, reserved_at = {now}, available_at = {due} "
                "WHERE " + HELD)
HELD_OF = "SELECT id, attempts, claim, uuid FROM jobs WHERE reserved_at IS NOT NULL AND id IN "
# Where an acknowledgement is one round trip of fixed statements (MySQL, Database.run_batch): the rows
# held under these reservations, found again by each statement after HELD_OF locked them.
HELD_AMONG = "reserved_at IS NOT NULL AND id IN {ids} AND (id, attempts, claim) IN ({fences})"
# Their uuids remembered: the row's, or (a row of the previous release has none) its payload's.
REMEMBER_HELD = ("INSERT INTO finished_jobs (uuid, finished_at) SELECT u, {now} FROM (SELECT "
                 "COALESCE(uuid{payload_uuid}) AS u FROM jobs WHERE {held}) held WHERE u IS NOT NULL")
DELETE_IDS = "DELETE FROM jobs WHERE id IN "
# The rows a reserve call still holds: RESERVED rows not lapsed yet, one range of jobs_reserve_index.
RECOVER = ("SELECT j.id, j.queue, j.payload, j.attempts, j.failing, j.failed_ran, " + TIMING + " FROM jobs j "
           "WHERE queue IN {marks} "
           "AND state = 2 AND available_at > {now} AND claim = ? AND reserved_at IS NOT NULL")
REMEMBER = "INSERT INTO finished_jobs (uuid, finished_at) VALUES {rows}"
REMEMBER_AGAIN = "finished_at = excluded.finished_at"     # a uuid finished again (retried): the later time
REMEMBER_ROW = "(?, {now})"
FORGET = "DELETE FROM finished_jobs WHERE uuid = ?"
# The oldest finished records past the window, at most ? of them: bounded work in an acknowledge.
PRUNE_WHERE = "finished_at < {now} - ?"
PRUNE_EVERY = 256          # finished jobs between two prunes, per process
PRUNE_LIMIT = 4 * PRUNE_EVERY   # more than a process remembers in between: the table cannot grow
# queue:retry of a job still stored: back to READY at its place, attempts and releases reset, its push
# time restarted (SPEC 9), its holder fenced out.
TAKE_OVER = ("UPDATE jobs SET queue = ?, payload = ?, attempts = 0, releases = 0, created_at = {now}, "
             "due_at = NULL, state = 0, available_at = 0, reserved_at = NULL, claim = NULL, failing = NULL, "
             "failed_ran = 0 WHERE uuid = ?")
# queue:retry --delay: the same, DELAYED until now + the delay.
TAKE_OVER_DELAYED = TAKE_OVER.replace("due_at = NULL, state = 0, available_at = 0",
                                      "due_at = {due}, state = 1, available_at = {due}")
STORED_UUIDS = "SELECT uuid FROM jobs WHERE uuid IN "
FINISHED_UUIDS = "SELECT uuid FROM finished_jobs WHERE finished_at + ? >= {now} AND uuid IN "
STORED = "SELECT payload FROM jobs WHERE queue = ? AND payload IN "
# A reserved row's available_at is when its reservation lapses: past it (a dead worker's job) no one
# holds it and it is due again, so it counts as pending, as status() says (SPEC: pending is due, not
# reserved), and queue:clear deletes it.
SIZES = ("SELECT queue, "
         "SUM(CASE WHEN available_at <= {now} THEN 1 ELSE 0 END), "
         "SUM(CASE WHEN reserved_at IS NULL AND available_at > {now} THEN 1 ELSE 0 END), "
         "SUM(CASE WHEN reserved_at IS NOT NULL AND available_at > {now} THEN 1 ELSE 0 END) FROM jobs")
# queue:clear, a batch per transaction: the waiting rows locked (FOR UPDATE where rows lock), deleted by
# id, and the uuids of those pushed within the replay window remembered, so a dispatch whose answer was
# lost and retries its push (push_missing) after the clear does not store the cleared job again. Read
# with a lock, not by an INSERT ... SELECT beside the DELETE: MySQL's INSERT ... SELECT read a snapshot
# in which a row a worker had just reserved was still waiting, remembered it without deleting it, and
# the job, back after its worker died, was dropped as "already ran".
CLEARABLE = ("SELECT id, uuid, created_at + ? >= {now} FROM jobs WHERE queue = ? "
             "AND (reserved_at IS NULL OR available_at <= {now}) ORDER BY id LIMIT ?")
SIGNAL_GET = "SELECT value FROM queue_signals WHERE name = ?"
# A counter, bumped in one statement: no clock is read, so workers on skewed hosts agree.
SIGNAL_BUMP = "INSERT INTO queue_signals (name, value) VALUES (?, 1)"
SIGNAL_BUMP_AGAIN = "value = queue_signals.value + 1"
BULK_ROWS = 500
PROMOTE_EVERY = 0.05     # seconds: how stale a busy reserve lets due and lapsed rows be
ALREADY_RAN = "%s already ran; a repeated push of it was dropped"


def marks(n: int) -> str:
    return "(" + ", ".join("?" for _ in range(n)) + ")"


class DatabaseQueue(DatabaseJobs, QueueConnection, QueueAdmin):
    name = "database"

    def __init__(self, db: Database, failed: FailedJobStore, visibility_timeout: int = 90,
                 replay_window: int = 900) -> None:
        self.db = db
        self.failed = failed
        self.visibility_timeout = visibility_timeout
        self.replay_window = replay_window
        self._finished_since_prune = 0
        dialect = db.dialect
        # Group commit (core.dispatch): SQLite writes through one connection, one push at a time;
        # a server takes several at once (its commits overlap), so four go before dispatches group.
        self.pushes_in_flight = 1 if dialect.embedded else 4
        # A server's push of many in one chunk is one INSERT, atomic by itself, without a
        # transaction's round trips (BEGIN, the clock, COMMIT): a dispatch group costs what one
        # push does. SQLite runs a transaction in one hop to its thread, and one that is cut
        # before it began stores nothing (a cut statement would still run).
        self._one_insert = not dialect.embedded
        self._pick = PICK + dialect.skip_locked
        self._due = DUE + dialect.skip_locked
        self._one_statement = dialect.returning
        self._take = TAKE.replace("{skip_locked}", dialect.skip_locked).replace("{relaxed}", dialect.relaxed_commit)
        self._acknowledge = ACKNOWLEDGE.replace("{upsert}", dialect.upsert("uuid", REMEMBER_AGAIN))
        self._acknowledge_only = (self._acknowledge.replace("{columns}", "").replace("{arrays}", "")
                                  .replace("{also}", ""))
        self._promoted_at: dict[tuple[str, ...], float] = {}
        self._lock_held = dialect.for_update
        self._renewable = RENEWABLE + "{marks}" + dialect.skip_locked if dialect.skip_locked else ""
        # A push of a uuid still stored is a no-op (it can only be a repeated push of the same job).
        self._on_duplicate = dialect.ignore_duplicate("uuid")
        self._remember = REMEMBER + dialect.upsert("uuid", REMEMBER_AGAIN)
        self._remember_held = REMEMBER_HELD + dialect.upsert("uuid", REMEMBER_AGAIN)
        self._clearable = CLEARABLE + dialect.for_update
        self._prune = dialect.delete_first("finished_jobs", "uuid", PRUNE_WHERE, "finished_at")
        self._signal_bump = SIGNAL_BUMP + dialect.upsert("name", SIGNAL_BUMP_AGAIN)
        self._state = DatabaseState(db)

    async def open(self) -> None:
        """Make or update the tables. A connection lost meanwhile is ConnectionFailed, as a refused
        connect is: a dispatch or a worker opening the queue waits it out instead of failing on the
        driver's own error."""
        try:
            await self.migrate()
        except Exception as exc:
            reason = self.connection_error(exc)
            if reason is None:
                raise
            raise ConnectionFailed(f"Cannot connect to {self.describe()}: {reason}") from None

    @property
    def state(self) -> DatabaseState:
        return self._state

    # -- schema -----------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Create the tables, or bring a database of the previous release up to date: its jobs,
        even those reserved or delayed, keep working."""
        dialect = self.db.dialect
        for statement in TABLES:
            await self.db.execute_ddl(dialect.ddl(statement))
        added = [name for name, ddl in COLUMNS.items() if await self.db.ensure(
            "jobs", name, dialect.column_names, dialect.ddl(f"ALTER TABLE jobs ADD COLUMN {name} {ddl}"))]
        reserve_index = RESERVE_INDEX if dialect.index_ends_with_key else RESERVE_INDEX_WITH_ID
        for table, name, ddl in (reserve_index, *INDEXES):
            await self.db.ensure(table, name, dialect.index_names, ddl)
        if "state" in added:
            async with self.db.transaction() as tx:
                await tx.execute(ADOPT_RESERVED, (self.visibility_timeout,))
                await tx.execute(ADOPT_DELAYED)
                await tx.execute(ADOPT_READY)
        names = await self.db.names("jobs", dialect.index_names)
        for old in (*OLD_INDEXES, *([] if reserve_index is RESERVE_INDEX else [RESERVE_INDEX[1]])):
            if old in names:
                await self.db.execute_ddl(dialect.drop_index("jobs", old))
        await self.failed.migrate()
        await self._state.migrate()

    def describe(self) -> str:
        return self.db.describe()

    def connection_error(self, exc: BaseException) -> str | None:
        return self.db.connection_error(exc)

    # -- push -------------------------------------------------------------------------------

    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        statement = self._push(queue, payload, delay)
        await self.db.execute(statement.sql, statement.params)
        if delay <= 0:
            await self.db.announce(queue)

    def _push(self, queue: str, payload: str, delay: float = 0, job_uuid: str | None = None) -> Statement:
        on_duplicate = self._on_duplicate
        priority = peek_priority(payload)
        job_uuid = job_uuid or peek_uuid(payload)
        if priority:
            if delay > 0:
                return change(PUSH_DELAYED_RANKED + on_duplicate,
                              (queue, payload, float(delay), job_uuid, float(delay), -priority))
            return change(PUSH_RANKED + on_duplicate, (queue, payload, job_uuid, -priority))
        if delay > 0:
            delay = float(delay)
            return change(PUSH_DELAYED + on_duplicate, (queue, payload, delay, job_uuid, delay))
        return change(PUSH + on_duplicate, (queue, payload, job_uuid))

    async def push_many(self, queue: str, payloads: Sequence[str], delay: float = 0) -> None:
        chunks = list(await self._chunks(payloads))
        if len(chunks) == 1 and self._one_insert:
            statement = self._push_rows(queue, chunks[0], delay)
            await self.db.execute(statement.sql, statement.params)
        else:
            await self.db.run_transaction(self._push_many_steps(queue, chunks, delay))
        if delay <= 0:
            await self.db.announce(queue)

    def _push_rows(self, queue: str, payloads: Sequence[str], delay: float) -> Statement:
        """One multi-row INSERT, each row as _push writes it (the database's clock in the statement)."""
        priorities = [peek_priority(payload) for payload in payloads]
        ranked = any(priorities)
        delay = float(delay)
        params: list = []
        for payload, priority in zip(payloads, priorities):
            if delay > 0:
                params += (queue, payload, delay, peek_uuid(payload), delay)
            else:
                params += (queue, payload, peek_uuid(payload))
            if ranked:
                params.append(-priority)
        columns = PUSH_COLUMNS_RANKED if ranked else PUSH_COLUMNS
        row = (PUSH_DELAYED_RANKED if delay > 0 else PUSH_RANKED) if ranked else (PUSH_DELAYED if delay > 0 else PUSH)
        return change(columns + ", ".join([row[len(columns):]] * len(payloads)) + self._on_duplicate, params)

    def _push_many_steps(self, queue: str, chunks: Sequence[Sequence[str]], delay: float) -> Steps[None]:
        on_duplicate = self._on_duplicate
        ((now, due),) = yield fetch(NOW, (float(delay),))
        available, state, now = (int(due), DELAYED, int(now)) if delay > 0 else (0, READY, int(now))
        due_at = available if delay > 0 else None
        for chunk in chunks:
            params: list = []
            ranked = any(peek_priority(payload) for payload in chunk)
            for payload in chunk:
                params += (queue, payload, available, now, peek_uuid(payload), state, due_at)
                if ranked:
                    params.append(-peek_priority(payload))
            columns, row = (PUSH_COLUMNS_RANKED, PUSH_ROW_RANKED) if ranked else (PUSH_COLUMNS, PUSH_ROW)
            yield change(columns + ", ".join([row] * len(chunk)) + on_duplicate, params)

    async def _chunks(self, payloads: Sequence[str]) -> Iterator[Sequence[str]]:
        """Batches of at most BULK_ROWS payloads, and on MySQL of at most a quarter of
        max_allowed_packet characters (a character takes at most 4 bytes, escaped or not):
        a statement over the packet limit is refused (error 1153)."""
        packet = await self.db.max_packet()
        return _batches(payloads, packet // 4 if packet else None)

    async def push_missing(self, queue: str, payloads: Sequence[str], delay: float = 0) -> None:
        """An insert whose answer was lost may have committed: leave out the jobs stored since, or
        finished since (their uuid is remembered), before inserting again. Only a retried dispatch
        pays for this look."""
        ids = {payload: peek_uuid(payload) for payload in payloads}
        known = [job_uuid for job_uuid in ids.values() if job_uuid is not None]
        seen: set[str] = set()
        for start in range(0, len(known), BULK_ROWS):
            chunk: Sequence[str] = known[start:start + BULK_ROWS]
            seen.update(u for (u,) in await self.db.fetchall(STORED_UUIDS + marks(len(chunk)), chunk))
            seen.update(u for (u,) in await self.db.fetchall(FINISHED_UUIDS + marks(len(chunk)),
                                                             [self.replay_window, *chunk]))
        # A payload without a readable uuid (written by hand) is looked up by its text.
        stored: set[str] = set()
        for chunk in await self._chunks([p for p, job_uuid in ids.items() if job_uuid is None]):
            rows = await self.db.fetchall(STORED + marks(len(chunk)), [queue, *chunk])
            stored.update(payload for (payload,) in rows)
        missing = [p for p in payloads if p not in stored and (ids[p] is None or ids[p] not in seen)]
        if missing:
            await self.push_many(queue, missing, delay)

    async def requeue(self, queue: str, payload: str, delay: float = 0, job_id: str | None = None) -> None:
        await self.db.run_transaction(self._requeue_steps(queue, payload, delay, job_id))
        await self.db.announce(queue)

    async def requeue_failed(self, store: FailedJobStore, job: FailedJob, delay: float = 0) -> bool:
        """The job is either still failed or back on its queue, never both or neither: one
        transaction when the failed store is in this database. It may deadlock with the worker
        that is failing the same job (both lock its jobs row and failed row): it runs again then."""
        if store.db is not self.db:
            return await super().requeue_failed(store, job, delay)
        done = await self.db.retrying_conflicts(
            lambda: self.db.run_transaction(self._requeue_failed_steps(store, job, delay)))
        if done:
            await self.db.announce(job.queue)
        return done

    def _requeue_failed_steps(self, store: FailedJobStore, job: FailedJob, delay: float = 0) -> Steps[bool]:
        if not (yield from store.forget_steps(job.uuid, job.row_id)):
            return False
        yield from self._requeue_steps(job.queue, job.payload, delay, job.uuid)
        return True

    def _requeue_steps(self, queue: str, payload: str, delay: float = 0, job_id: str | None = None) -> Steps[None]:
        """Forget the finished record, and take the job over if it is still stored (a worker still
        failing it loses its reservation), else push it (under `job_id` when the payload has no
        readable uuid of its own)."""
        job_uuid = peek_uuid(payload) or job_id
        if job_uuid is not None:
            yield change(FORGET, (job_uuid,))
            taken = yield (change(TAKE_OVER_DELAYED, (queue, payload, float(delay), float(delay), job_uuid))
                           if delay > 0 else change(TAKE_OVER, (queue, payload, job_uuid)))
            if taken > 0:
                return
        yield self._push(queue, payload, delay, job_uuid)

    # -- reserve ----------------------------------------------------------------------------

    async def reserve(self, queues: Sequence[str], claim: str | None = None) -> ReservedJob | None:
        jobs = await self.reserve_many(queues, 1, claim)
        return jobs[0] if jobs else None

    async def reserve_many(self, queues: Sequence[str], limit: int, claim: str | None = None) -> list[ReservedJob]:
        claim = claim or secrets.token_hex(8)     # the fence needs one even when the caller has none
        return await self._run_reserve(self._reserve_steps(queues, limit, claim))

    async def _run_reserve(self, steps: Steps[tuple[list[ReservedJob], list[str]]]) -> list[ReservedJob]:
        if self._one_statement:
            taken, dropped = await self.db.run_statements(steps)
        else:
            taken, dropped = await self.db.run_transaction(steps)
        for job_uuid in dropped:
            log.warning(ALREADY_RAN, job_uuid)
        return taken

    def _reserve_steps(self, queues: Sequence[str], limit: int,
                       claim: str) -> Steps[tuple[list[ReservedJob], list[str]]]:
        """Promote what fell due, then pick READY rows. The promotion is a statement of its own (a
        quarter of a busy MySQL reserve), so while the READY rows fill the call it runs at most
        every PROMOTE_EVERY seconds per queue list: a due job waits at most that long behind ready
        ones. A call the READY rows do not fill always promotes first, so an idle worker, or one
        told to --stop-when-empty, never misses a due job."""
        key = tuple(queues)
        clock = time.monotonic()
        promoted = clock - self._promoted_at.get(key, 0.0) >= PROMOTE_EVERY
        if promoted:
            self._promoted_at[key] = clock
            yield from self._promote_steps(queues)
        taken, dropped = yield from self._pick_steps(queues, limit, claim)
        if len(taken) < limit and not promoted:
            self._promoted_at[key] = clock
            if (yield from self._promote_steps(queues)):
                more, dropped_more = yield from self._pick_steps(queues, limit - len(taken), claim)
                taken, dropped = taken + more, dropped + dropped_more
        return taken, dropped

    async def reserve_wait(self, queues: Sequence[str], timeout: float,
                           interrupt: asyncio.Event | None = None, claim: str | None = None) -> ReservedJob | None:
        """Reserve; if nothing is due, wait up to `timeout` seconds for a wake-up (SPEC 17) and
        reserve again on each. The mark is taken before the first look: a push between that look
        and the wait still wakes it."""
        waker = self.db.waker() if timeout > 0 else None
        since = waker.mark() if waker is not None else 0
        job = await self.reserve(queues, claim)
        if job is not None or waker is None:
            return job
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not await waker.wait(queues, since, left, interrupt):
                return None
            since = waker.mark()
            # A wake-up is a push: READY rows to pick, nothing to promote (delayed and lapsed
            # rows are promoted by the look every --sleep).
            jobs = await self._run_reserve(self._pick_steps(queues, 1, claim or secrets.token_hex(8)))
            if jobs:
                return jobs[0]
        return None

    def _promote_steps(self, queues: Sequence[str]) -> Steps[int]:
        """Due DELAYED rows and lapsed RESERVED ones become READY; how many."""
        if self._one_statement:
            due_rows = self._due.replace("{marks}", marks(len(queues)))
            return (yield change(PROMOTE_DUE + due_rows + ")", [*queues, self.visibility_timeout]))
        due = yield fetch(self._due.replace("{marks}", marks(len(queues))), [*queues, self.visibility_timeout])
        if due:
            yield change(PROMOTE + marks(len(due)), [job_id for (job_id,) in due])
        return len(due)

    def _pick_steps(self, queues: Sequence[str], limit: int, claim: str) -> Steps[tuple[list[ReservedJob], list[str]]]:
        if self._one_statement:
            return (yield from self._take_steps(queues, limit, claim))
        vt = self.visibility_timeout
        taken: list[ReservedJob] = []
        dropped: list[str] = []
        for queue in queues:
            rows = yield fetch(self._pick, (self.replay_window, queue, vt, limit - len(taken)))
            ran = [(job_id, job_uuid) for job_id, _, _, _, _, job_uuid, finished, *_ in rows if finished]
            if ran:
                yield change(DELETE_IDS + marks(len(ran)), [job_id for job_id, _ in ran])
                dropped += [job_uuid for _, job_uuid in ran]
            fresh = [row for row in rows if not row[6]]
            if fresh:
                yield change(MARK_RESERVED + marks(len(fresh)), [vt, claim, *(row[0] for row in fresh)])
                taken += [_reserved(queue, (*row[:5], *row[7:]), claim, counted=True) for row in fresh]
            if len(taken) >= limit:
                break
        return taken, dropped

    def _take_steps(self, queues: Sequence[str], limit: int, claim: str) -> Steps[tuple[list[ReservedJob], list[str]]]:
        """_pick_steps in one statement per queue: the rows come reserved, in no order (sorted by id
        here). A job that already ran is reserved, then deleted by the next statement: if that
        never runs, its reservation lapses and the next reserve drops it."""
        vt = self.visibility_timeout
        taken: list[ReservedJob] = []
        dropped: list[str] = []
        for queue in queues:
            rows = yield fetch(self._take, (vt, claim, queue, vt, limit - len(taken), self.replay_window))
            rows.sort(key=lambda row: row[0])
            ran = [(job_id, job_uuid) for job_id, _, _, _, _, job_uuid, finished, *_ in rows if finished]
            if ran:
                yield change(DELETE_IDS + marks(len(ran)), [job_id for job_id, _ in ran])
                dropped += [job_uuid for _, job_uuid in ran]
            taken += [_reserved(queue, (*row[:5], *row[7:]), claim, counted=False) for row in rows if not row[6]]
            if len(taken) >= limit:
                break
        return taken, dropped

    async def recover(self, queues: Sequence[str], claim: str) -> list[ReservedJob]:
        rows = await self.db.fetchall(RECOVER.replace("{marks}", marks(len(queues))), [*queues, claim])
        order = {queue: n for n, queue in enumerate(queues)}
        rows.sort(key=lambda row: (order.get(row[1], len(order)), row[0]))
        return [_reserved(queue, (job_id, *rest), claim, counted=False) for job_id, queue, *rest in rows]

    # -- finish -----------------------------------------------------------------------------

    async def acknowledge(self, job: ReservedJob) -> bool:
        return (await self.acknowledge_many([job]))[0]

    async def acknowledge_many(self, jobs: Sequence[ReservedJob]) -> list[bool]:
        """One transaction: lock the rows still held under these reservations, delete those and
        remember their uuids."""
        if not jobs:
            return []
        if self._one_statement:
            return await self.db.run_statements(self._acknowledge_one_steps(jobs))
        if self.db.batches:
            return await self._acknowledge_at_once(jobs, [])
        return await self.db.run_transaction(self._acknowledge_steps(jobs))

    async def _acknowledge_at_once(self, jobs: Sequence[ReservedJob], records: Sequence[Statement]) -> list[bool]:
        """The acknowledgement as fixed statements sent in one round trip (Database.run_batch): lock
        the held rows, then `records` (statements each fenced to its job's reservation), remember
        the held rows' uuids, delete them. No statement waits for this process, so no row stays
        locked while job code blocks the worker's loop."""
        fences = [fence(job) for job in jobs]
        ids = [job_id for job_id, _, _ in fences]
        held = (HELD_AMONG.replace("{ids}", marks(len(ids)))
                .replace("{fences}", ", ".join(["(?, ?, ?)"] * len(fences))))
        held_params = [*ids, *(value for held_row in fences for value in held_row)]
        named = [(job_id, job_uuid) for job_id, job_uuid in zip(ids, map(peek_uuid, (job.payload for job in jobs)))
                 if job_uuid is not None]
        payload_uuid = (", CASE id " + " ".join(["WHEN ? THEN ?"] * len(named)) + " END") if named else ""
        remember = self._remember_held.replace("{payload_uuid}", payload_uuid).replace("{held}", held)
        statements = [fetch(HELD_OF + marks(len(ids)) + self._lock_held, ids), *records,
                      change(remember, [*(value for pair in named for value in pair), *held_params]),
                      change("DELETE FROM jobs WHERE " + held, held_params)]
        self._finished_since_prune += len(jobs)
        if self._finished_since_prune >= PRUNE_EVERY:
            self._finished_since_prune = 0
            statements.append(change(self._prune, (self.replay_window, PRUNE_LIMIT)))
        rows = (await self.db.run_batch(statements))[0]
        held_now = {f"{job_id}:{attempts}:{claim}" for job_id, attempts, claim, _ in rows}
        return [f"{job.id}:{job.token}" in held_now for job in jobs]

    @property
    def held_acknowledgements(self) -> str | None:
        """How a worker above concurrency 1 sends the acknowledgements it held while every slot was busy:
        "carried" by its next reserve where acknowledge_and_reserve is one transaction in one hop
        (SQLite: one commit instead of two); on MySQL and PostgreSQL they would run one after the other
        instead of side by side, so none is held (None)."""
        return None if self._one_statement or self.db.batches else "carried"

    async def acknowledge_and_reserve(self, jobs: Sequence[ReservedJob], queue: str,
                                      claim: str, limit: int = 1) -> tuple[list[bool], list[ReservedJob]]:
        """A worker: the finished jobs' acknowledgement, then the next reserve of up to `limit` jobs
        of `queue`, never side by side. Sent beside the reserve (its own transaction on another
        connection), the acknowledgement's locks made MariaDB's SKIP LOCKED pass over the next ready
        row now and then, so one worker ran two jobs of a priority out of dispatch order. On SQLite
        they are one transaction (a commit per job saved); where a statement is its own step
        (PostgreSQL), or the acknowledgement is one packet (MySQL: as one transaction of several round
        trips it kept its rows locked while code blocking the loop, a listener's, ran between them),
        they run one after the other."""
        if self._one_statement or self.db.batches:
            return await self.acknowledge_many(jobs), await self.reserve_many([queue], limit, claim)

        def steps() -> Steps[tuple[list[bool], tuple[list[ReservedJob], list[str]]]]:
            done = yield from self._acknowledge_steps(jobs)
            taken = yield from self._reserve_steps([queue], limit, claim)
            return done, taken

        done, (taken, dropped) = await self.db.run_transaction(steps())
        for job_uuid in dropped:
            log.warning(ALREADY_RAN, job_uuid)
        return done, taken

    def _acknowledge_one_steps(self, jobs: Sequence[ReservedJob]) -> Steps[list[bool]]:
        rows = yield fetch(self._acknowledge_only, held_arrays(jobs))
        return (yield from self._acknowledged(jobs, rows))

    def _acknowledged(self, jobs: Sequence[ReservedJob], rows: Sequence[tuple]) -> Steps[list[bool]]:
        """The one-statement acknowledgement's answer (the rows it deleted) per job, and now and then a prune."""
        gone = {f"{job_id}:{attempts}:{claim}" for job_id, attempts, claim in rows}
        self._finished_since_prune += len(gone)
        if self._finished_since_prune >= PRUNE_EVERY:       # on its own: pruning needs no transaction
            self._finished_since_prune = 0
            yield change(self._prune, (self.replay_window, PRUNE_LIMIT))
        return [f"{job.id}:{job.token}" in gone for job in jobs]

    def _acknowledge_steps(self, jobs: Sequence[ReservedJob]) -> Steps[list[bool]]:
        rows = yield fetch(HELD_OF + marks(len(jobs)) + self._lock_held, [int(job.id) for job in jobs])
        held = {f"{job_id}:{attempts}:{claim}": job_uuid for job_id, attempts, claim, job_uuid in rows}
        done = [f"{job.id}:{job.token}" in held for job in jobs]
        mine = [int(job.id) for job, ok in zip(jobs, done) if ok]
        if mine:
            yield change(DELETE_IDS + marks(len(mine)), mine)
            # A row of the previous release has no uuid column value: read it from its payload.
            yield from self._remember_steps([held[f"{job.id}:{job.token}"] or peek_uuid(job.payload)
                                             for job, ok in zip(jobs, done) if ok])
        return done

    def _remember_steps(self, uuids: Sequence[str | None]) -> Steps[None]:
        """Record finished jobs' uuids, and now and then drop records older than the window.
        (Steps of one queue always run in one thread, the loop's or SQLite's: the counter is safe.)"""
        uuids = [job_uuid for job_uuid in uuids if job_uuid is not None]
        if not uuids:
            return
        yield change(self._remember.replace("{rows}", ", ".join([REMEMBER_ROW] * len(uuids))), uuids)
        self._finished_since_prune += len(uuids)
        if self._finished_since_prune >= PRUNE_EVERY:
            self._finished_since_prune = 0
            yield change(self._prune, (self.replay_window, PRUNE_LIMIT))

    async def release(self, job: ReservedJob, delay: float = 0, *, free: bool = False) -> bool:
        if delay > 0:
            sql = RELEASE_FREE_DELAYED if free else RELEASE_HELD_DELAYED
            return await self.db.execute(sql, (float(delay), *fence(job))) == 1
        return await self.db.execute(RELEASE_FREE if free else RELEASE_HELD, fence(job)) == 1

    async def unreserve(self, job: ReservedJob) -> bool:
        """Put back a job this worker reserved but never started (it was stopping): it waits at its
        place again with its attempt taken back, as if never reserved. False if the reservation was lost."""
        return await self.db.execute(UNRESERVE, fence(job)) == 1

    async def release_failed(self, job: ReservedJob, delay: float, error: str) -> bool:
        error = storable(error)[:1000]
        if delay > 0:
            return await self.db.execute(RELEASE_ERROR_DELAYED, (error, float(delay), *fence(job))) == 1
        return await self.db.execute(RELEASE_ERROR, (error, *fence(job))) == 1

    async def mark_failing(self, job: ReservedJob, exception: str, failed_ran: bool = False) -> bool:
        params = (storable(exception), int(failed_ran), self.visibility_timeout, *fence(job))
        return await self.db.execute(MARK_FAILING, params) == 1

    async def fail(self, job: ReservedJob, exception: str) -> bool:
        return await self.db.run_transaction(self._fail_steps(job, exception))

    def _fail_steps(self, job: ReservedJob, exception: str) -> Steps[bool]:
        job_uuid = peek_uuid(job.payload)
        # A payload with no readable uuid (not JSON): the row's, the id it was dispatched under; a row
        # with none (written by hand, or by an earlier release) by its own id, the one its JobFailed
        # event and log lines name, so queue:retry takes the id they give.
        row_uuid = None if job_uuid else ((yield fetch(UUID_OF, (int(job.id),))) or [(None,)])[0][0] or job.id
        if (yield change(DELETE_HELD, fence(job))) != 1:
            return False
        yield from self.failed.record_steps(self.name, job.queue, job.payload, exception, job.attempts, row_uuid)
        yield from self._remember_steps([job_uuid])
        return True

    async def extend(self, jobs: Sequence[ReservedJob]) -> list[str]:
        if not jobs:
            return []
        return await self.db.run_transaction(self._extend_steps(jobs))

    def _extend_steps(self, jobs: Sequence[ReservedJob]) -> Steps[list[str]]:
        """Renew each held row, skipping those another transaction has locked: on MySQL that is
        mostly the worker's own acknowledgement, whose next statement waits while job code blocks
        its loop. Waiting for that lock held up every other job's renewal (the heartbeat renews
        them in this one transaction) until their reservations lapsed; the locked row is being
        acknowledged or released, and no reserve can take it while it is locked."""
        if self._renewable:
            ids = [int(job.id) for job in jobs]
            free = {row_id for (row_id,) in (yield fetch(self._renewable.replace("{marks}", marks(len(ids))), ids))}
            jobs = [job for job in jobs if int(job.id) in free]
        for job in jobs:
            yield change(EXTEND_HELD, (self.visibility_timeout, *fence(job)))
        # SPEC 11: which of them someone cancelled, learnt with the renewal (database_status.py).
        return (yield from self._cancelled_steps(jobs))

    # -- inspect ----------------------------------------------------------------------------

    async def sizes(self, queues: Sequence[str] | None = None) -> dict[str, QueueSize]:
        if queues:
            rows = await self.db.fetchall(SIZES + f" WHERE queue IN {marks(len(queues))} GROUP BY queue", list(queues))
        else:
            rows = await self.db.fetchall(SIZES + " GROUP BY queue ORDER BY queue")
        found = {q: QueueSize(int(p or 0), int(d or 0), int(r or 0)) for q, p, d, r in rows}
        return {q: found.get(q, QueueSize()) for q in queues} if queues else found

    async def clear(self, queue: str) -> int:
        total = 0
        while True:
            # Each batch's transaction may deadlock with the workers' acknowledgements: run it again.
            count = await self.db.retrying_conflicts(lambda: self.db.run_transaction(self._clear_steps(queue)))
            total += count
            if count < BULK_ROWS:
                return total

    def _clear_steps(self, queue: str) -> Steps[int]:
        rows = yield fetch(self._clearable, (self.replay_window, queue, BULK_ROWS))
        if not rows:
            return 0
        deleted = yield change(DELETE_IDS + marks(len(rows)), [int(row_id) for row_id, _, _ in rows])
        yield from self._remember_steps([job_uuid for _, job_uuid, recent in rows if recent])
        return int(deleted)

    async def request_restart(self) -> None:
        await self.db.execute(self._signal_bump, ("restart",))

    async def restart_signal(self) -> str:
        row = await self.db.fetchone(SIGNAL_GET, ("restart",))
        return repr(float(row[0])) if row else ""


def _reserved(queue: str, row: Sequence, claim: str, counted: bool) -> ReservedJob:
    """A ReservedJob from (id, payload, attempts, failing, failed_ran, releases, pushed_at, due_at,
    now); `counted`: attempts is the value before this reserve's increment."""
    job_id, payload, attempts, failing, failed_ran, releases, pushed_at, due_at, now = row
    attempts = int(attempts) + (1 if counted else 0)
    return ReservedJob(id=str(job_id), queue=queue, payload=payload, attempts=attempts, token=f"{attempts}:{claim}",
                       failing=failing, failed_ran=bool(failed_ran), releases=int(releases),
                       pushed_at=float(pushed_at), due_at=float(due_at), now=float(now))


def _batches(payloads: Sequence[str], budget: int | None) -> Iterator[Sequence[str]]:
    """Consecutive slices of at most BULK_ROWS payloads and (when given) `budget` characters;
    a payload alone over the budget still gets its own slice."""
    start, size = 0, 0
    for end, payload in enumerate(payloads):
        if end > start and (end - start >= BULK_ROWS or (budget is not None and size + len(payload) > budget)):
            yield payloads[start:end]
            start, size = end, 0
        size += len(payload)
    if start < len(payloads):
        yield payloads[start:]
