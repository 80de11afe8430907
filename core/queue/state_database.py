"""Job middleware state (SPEC 9) in the queue's database: SQLite or MySQL/MariaDB.

Tables (created by migrate and on first use):

    job_locks       (name PK, owner, expires_at)              WithoutOverlapping
    job_limits      (name PK)                                 one row per limiter: the row its hits lock
    job_limit_hits  (id PK, name, at), index (name, at)       one row per start within the window
    job_throttles   (name PK, failures, open_until, forget_at) ThrottlesExceptions

Every operation is one transaction that first locks the key's row (SQLite: BEGIN IMMEDIATE locks
the file), so concurrent workers see each other's hits and owners, never a count read before
another's insert. Times are the database's clock in seconds (`{clock}`, sub-second: a limiter's
window may be shorter than a second), read once per transaction and passed on, so one
decision uses one instant. A lock conflict MySQL breaks (error 1213, two first hits of a new key
at once) is retried: the aborted transaction changed nothing.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from core.database import Database, Steps, change, fetch
from core.queue.state import Circuit, MiddlewareState, next_circuit

T = TypeVar("T")
# DDL written once; the dialect fills in {id}, {uint}, {double}, {table}, {keyed_table}.
TABLES = [
    """CREATE TABLE IF NOT EXISTS job_locks (
        name VARCHAR(255) NOT NULL PRIMARY KEY, owner VARCHAR(255) NOT NULL,
        expires_at {double} NOT NULL){keyed_table}""",
    "CREATE TABLE IF NOT EXISTS job_limits (name VARCHAR(255) NOT NULL PRIMARY KEY){keyed_table}",
    """CREATE TABLE IF NOT EXISTS job_limit_hits (
        id {id}, name VARCHAR(255) NOT NULL, at {double} NOT NULL){table}""",
    """CREATE TABLE IF NOT EXISTS job_throttles (
        name VARCHAR(255) NOT NULL PRIMARY KEY, failures {uint} NOT NULL, open_until {double} NOT NULL,
        forget_at {double} NOT NULL){keyed_table}""",
]
HITS_INDEX = "job_limit_hits_name_at_index"
CREATE_HITS_INDEX = f"CREATE INDEX {HITS_INDEX} ON job_limit_hits (name, at)"
LIMIT_ROW = "INSERT INTO job_limits (name) VALUES (?)"
LIMIT_LOCK = "SELECT {clock} FROM job_limits WHERE name = ?"
LIMIT_FORGET = "DELETE FROM job_limit_hits WHERE name = ? AND at <= ?"
LIMIT_COUNT = "SELECT COUNT(*), MIN(at) FROM job_limit_hits WHERE name = ?"
LIMIT_HIT = "INSERT INTO job_limit_hits (name, at) VALUES (?, ?)"
LOCK_ROW = "INSERT INTO job_locks (name, owner, expires_at) VALUES (?, '', 0)"
# Taken when free (its row just made, or lapsed) or already this owner's; counts the row it matched.
LOCK_TAKE = ("UPDATE job_locks SET owner = ?, expires_at = {clock} + ? "
             "WHERE name = ? AND (owner = ? OR expires_at <= {clock})")
LOCK_RENEW = "UPDATE job_locks SET expires_at = {clock} + ? WHERE name = ? AND owner = ? AND expires_at > {clock}"
LOCK_HELD = "SELECT expires_at > {clock} FROM job_locks WHERE name = ? AND owner = ?"
LOCK_FREE = "DELETE FROM job_locks WHERE name = ? AND owner = ?"
THROTTLE_ROW = "INSERT INTO job_throttles (name, failures, open_until, forget_at) VALUES (?, 0, 0, 0)"
THROTTLE_READ = "SELECT failures, open_until, forget_at, {clock} FROM job_throttles WHERE name = ?"
THROTTLE_WRITE = "UPDATE job_throttles SET failures = ?, open_until = ?, forget_at = ? WHERE name = ?"
THROTTLE_OPEN = "SELECT open_until - {clock} FROM job_throttles WHERE name = ?"
THROTTLE_CLOSE = "DELETE FROM job_throttles WHERE name = ?"


class DatabaseState(MiddlewareState):
    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = db.dialect
        self._for_update = dialect.for_update
        self._clock = dialect.clock
        self._ignore = dialect.ignore_duplicate("name")

    def _sql(self, text: str) -> str:
        return text.replace("{clock}", self._clock)

    async def migrate(self) -> None:
        dialect = self.db.dialect
        for statement in TABLES:
            await self.db.execute_ddl(dialect.ddl(statement))
        if HITS_INDEX not in {name for (name,) in await self.db.fetchall(dialect.index_names, ("job_limit_hits",))}:
            await self.db.execute_ddl(CREATE_HITS_INDEX)

    async def _transact(self, make_steps: Callable[[], Steps[T]]) -> T:
        """Run a fresh transaction of `make_steps()`, again if MySQL aborts it over a lock conflict."""
        return await self.db.retrying_conflicts(lambda: self.db.run_transaction(make_steps()))

    # -- RateLimited ------------------------------------------------------------------------

    async def limit_hit(self, key: str, allow: int, every: float) -> float:
        return await self._transact(lambda: self._limit_steps(key, allow, float(every)))

    def _limit_steps(self, key: str, allow: int, every: float) -> Steps[float]:
        yield change(LIMIT_ROW + self._ignore, (key,))
        ((now,),) = yield fetch(self._sql(LIMIT_LOCK) + self._for_update, (key,))
        now = float(now)
        yield change(LIMIT_FORGET, (key, now - every))
        ((count, oldest),) = yield fetch(LIMIT_COUNT, (key,))
        if count < allow:
            yield change(LIMIT_HIT, (key, now))
            return 0.0
        return max(float(oldest) + every - now, 1e-6)

    # -- WithoutOverlapping -----------------------------------------------------------------

    async def lock_acquire(self, key: str, owner: str, ttl: float) -> bool:
        return await self._transact(lambda: self._acquire_steps(key, owner, float(ttl)))

    def _acquire_steps(self, key: str, owner: str, ttl: float) -> Steps[bool]:
        yield change(LOCK_ROW + self._ignore, (key,))
        return (yield change(self._sql(LOCK_TAKE), (owner, ttl, key, owner))) == 1

    async def lock_renew(self, locks: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        if not locks:
            return []
        return await self._transact(lambda: self._renew_steps(locks, float(ttl)))

    def _renew_steps(self, locks: Sequence[tuple[str, str]], ttl: float) -> Steps[list[bool]]:
        renewed: dict[tuple[str, str], bool] = {}
        for key, owner in sorted(set(locks)):       # one order for every worker: no lock cycle
            renewed[(key, owner)] = (yield change(self._sql(LOCK_RENEW), (ttl, key, owner))) == 1
        return [renewed[lock] for lock in locks]

    async def lock_free(self, key: str, owner: str) -> bool:
        return await self._transact(lambda: self._free_steps(key, owner))

    def _free_steps(self, key: str, owner: str) -> Steps[bool]:
        rows = yield fetch(self._sql(LOCK_HELD) + self._for_update, (key, owner))
        if not rows:
            return False
        yield change(LOCK_FREE, (key, owner))     # a lapsed row of this owner goes too
        return bool(rows[0][0])

    # -- ThrottlesExceptions ----------------------------------------------------------------

    async def throttle_open_for(self, key: str) -> float:
        row = await self.db.fetchone(self._sql(THROTTLE_OPEN), (key,))
        return max(0.0, float(row[0])) if row else 0.0

    async def throttle_failure(self, key: str, max_exceptions: int, decay: float) -> float:
        return await self._transact(lambda: self._failure_steps(key, max_exceptions, float(decay)))

    def _failure_steps(self, key: str, max_exceptions: int, decay: float) -> Steps[float]:
        yield change(THROTTLE_ROW + self._ignore, (key,))
        ((failures, open_until, forget_at, now),) = yield fetch(self._sql(THROTTLE_READ) + self._for_update, (key,))
        now = float(now)
        circuit = next_circuit(Circuit(int(failures), float(open_until), float(forget_at)), now, max_exceptions, decay)
        yield change(THROTTLE_WRITE, (circuit.failures, circuit.open_until, circuit.forget_at, key))
        return max(0.0, circuit.open_until - now)

    async def throttle_success(self, key: str) -> None:
        await self.db.execute(THROTTLE_CLOSE, (key,))
