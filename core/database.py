"""One small async layer over aiosqlite and aiomysql.

SQL is written with `?` placeholders, `{now}` for the database's clock (whole unix seconds) and
`{due}` for "now plus ? seconds", rounded up; `sql()` turns it into the database's form through
its dialect (core/dialects.py, where every difference of SQL text lives). Values are always
passed as parameters.

A transaction's logic is written once for both dialects as *steps*: a generator that yields
Statements (`fetch`, `change`), is sent each one's result and returns the transaction's result.
`Database.run_transaction(steps)` runs it: on MySQL statement by statement through aiomysql, on
SQLite whole in aiosqlite's thread, as one hop instead of one per statement.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from core.config import DatabaseConfig, project_path
from core.dialects import DIALECTS, MYSQL, SQLITE, Dialect, translate
from core.errors import ConfigError, ConnectionFailed
from core.wake import Announcer, DataVersionWaker, Pace, SocketBus, Waker, Wakeups

log = logging.getLogger("worker")

# Clean-up tasks of cut transactions, kept referenced until they end (the loop holds tasks weakly).
_CLEANUPS: set["asyncio.Task[None]"] = set()


T = TypeVar("T")


class Statement(NamedTuple):
    sql: str
    params: Sequence[Any]
    rows: bool            # True: answered with its rows (tuples); False: with the count of rows it changed


def fetch(sql: str, params: Sequence[Any] = ()) -> Statement:
    return Statement(sql, params, True)


def change(sql: str, params: Sequence[Any] = ()) -> Statement:
    return Statement(sql, params, False)


# A transaction's logic: yields Statements, is sent each one's answer, returns the result.
Steps = Generator[Statement, Any, T]


class Session:
    """What a transaction (or the database outside one) can run."""

    def __init__(self, db: "Database", conn: Any) -> None:
        self._db, self._conn = db, conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return await self._db._execute(self._conn, sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return await self._db._fetch(self._conn, sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def run(self, steps: Steps[T]) -> T:
        """Run steps here, statement by statement (inside this session's transaction, if any)."""
        answer: Any = None
        while True:
            try:
                statement = steps.send(answer)
            except StopIteration as stop:
                return stop.value
            if statement.rows:
                answer = await self.fetchall(statement.sql, statement.params)
            else:
                answer = await self.execute(statement.sql, statement.params)


class Database:
    dialect: Dialect

    @staticmethod
    async def connect(config: DatabaseConfig) -> "Database":
        dialect = DIALECTS.get(config.driver)
        if dialect is None:
            *others, last = DIALECTS
            raise ConfigError(f"DB_CONNECTION must be {', '.join(others)} or {last}, got {config.driver!r}")
        module, _, name = dialect.database.partition(":")
        db: Database = getattr(importlib.import_module(module), name).from_config(config)
        await db.open()
        return db

    @classmethod
    def from_config(cls, config: DatabaseConfig) -> "Database":
        raise NotImplementedError

    # True when the database reads this host's clock (SQLite): a process can tell which database
    # second it is without asking.
    local_clock = False

    def sql(self, text: str) -> str:
        return translate(self.dialect, text)

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # -- wake-up (SPEC 17; core/wake.py) -------------------------------------------------------

    wake = True                  # DB_WAKE: off leaves idle workers polling every --sleep
    _waker: Waker | None = None
    _announcer: Announcer | None = None
    _silent = False              # no announcer: DB_WAKE=off, or commits wake the workers themselves
    _wake_carried = False        # a wake-up takes a pooled connection: one due rides on the next push (Announcer)

    def waker(self) -> Waker | None:
        """The worker's side of wake-up, made on first use; None when this database has none."""
        if self._waker is None and self.wake:
            try:
                self._waker = self._make_waker()
            except OSError as exc:          # no socket, no descriptor: the worker polls, as with DB_WAKE=off
                self.wake = False
                log.warning("Wake-up is off for %s: %s; jobs are found every --sleep", self.describe(), exc)
        return self._waker

    def _make_waker(self) -> Waker | None:
        return None

    async def announce(self, queue: str) -> None:
        """After a push of a due job committed (never inside its transaction): wake the workers
        waiting for `queue`. Never raises: the job is stored, a lost wake-up costs at most --sleep."""
        announcer = self._announcer
        if announcer is None:
            if self._silent:
                return
            send = self._wake_sender() if self.wake else None
            if send is None:
                self._silent = True
                return
            announcer = self._announcer = Announcer(send, shared=self._wake_pace(), carried=self._wake_carried)
        await announcer.announce(queue)

    def _wake_sender(self) -> Callable[[str], Awaitable[None]] | None:
        """How this database sends one wake-up for a queue; None: a commit wakes the workers itself."""
        return None

    def _wake_pace(self) -> Pace | None:
        """The token buckets this host's processes share for this database's wake-ups (None: per process)."""
        return None

    async def _close_wake(self) -> None:
        """Send what the announcer holds back, stop the waker: the first step of close()."""
        if self._announcer is not None:
            announcer, self._announcer = self._announcer, None
            await announcer.flush()
            announcer.close()
        if self._waker is not None:
            waker, self._waker = self._waker, None
            waker.close()

    def describe(self) -> str:
        """The database and where it is, for messages; never a password."""
        return self.dialect.name

    async def max_packet(self) -> int | None:
        """The longest statement the server takes, in bytes; None when there is no such limit."""
        return None

    def connection_error(self, exc: BaseException) -> str | None:
        """A short reason when `exc` means the server could not be reached or the connection
        dropped (worth retrying); None for any other error."""
        return None

    def lock_conflict(self, exc: BaseException) -> bool:
        """Whether `exc` is a transaction the server chose to abort over a lock (a deadlock, a lock
        wait timeout): nothing of it was kept, and running it again is the documented answer."""
        return False

    async def retrying_conflicts(self, attempt: Callable[[], Awaitable[T]], tries: int = 5) -> T:
        """Run `attempt` (a whole transaction or statement), again when a lock conflict aborted it:
        a queue:retry or queue:clear racing the workers' own transactions may deadlock with them."""
        for n in range(1, tries + 1):
            try:
                return await attempt()
            except Exception as exc:
                if n == tries or not self.lock_conflict(exc):
                    raise
                await asyncio.sleep(0.05 * n)
        raise AssertionError("not reached")

    # Each dialect's class provides these four.
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    def session(self) -> contextlib.AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    async def execute_ddl(self, ddl: str) -> bool:
        """Run a CREATE or ALTER that another process migrating at the same moment may have run
        first (on PostgreSQL two CREATE TABLE IF NOT EXISTS at once can both pass the check, the
        second failing on a duplicate type); True if this call ran it."""
        try:
            await self.execute(ddl)
            return True
        except Exception as exc:
            if self.connection_error(exc):
                raise
            text = str(exc).lower()
            if "duplicate" in text or "already exists" in text or "check that" in text or "1091" in text:
                return False
            raise

    async def names(self, table: str, query: str) -> set[str]:
        """A table's column or index names, by the dialect's query for them (column_names, index_names)."""
        return {str(name) for (name,) in await self.fetchall(query, (table,))}

    async def ensure(self, table: str, name: str, query: str, ddl: str) -> bool:
        """Run `ddl` unless `name` exists (a column or an index, as `query` lists them); True if this
        call created it."""
        if name in await self.names(table, query):
            return False
        return await self.execute_ddl(ddl) and name in await self.names(table, query)

    async def run_statements(self, steps: Steps[T]) -> T:
        """Run steps statement by statement on one connection, each statement atomic on its own:
        for steps whose statements need no transaction around them."""
        async with self.session() as s:
            return await s.run(steps)

    async def run_transaction(self, steps: Steps[T]) -> T:
        """Run steps as one transaction: committed when they return, rolled back when they or a
        statement raise, or when the caller is cancelled before the commit."""
        async with self.transaction() as tx:
            return await tx.run(steps)

    # True where run_batch sends all its statements in one round trip (MySQL).
    batches = False

    async def run_batch(self, statements: Sequence[Statement]) -> list[Any]:
        """Run statements that need no earlier statement's answer as one transaction; each one's
        answer, in order. Where the database is a server, they go out together, so the transaction
        holds its row locks for the server's time only, never while the caller's loop runs other
        code between two round trips."""
        def steps() -> Steps[list[Any]]:
            answers = []
            for statement in statements:
                answers.append((yield statement))
            return answers

        return await self.run_transaction(steps())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self.session() as s:
            return await s.execute(sql, params)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        async with self.session() as s:
            return await s.fetchall(sql, params)

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> int:
        raise NotImplementedError

    async def _fetch(self, conn: Any, sql: str, params: Sequence[Any]) -> list[tuple]:
        raise NotImplementedError


class SqliteDatabase(Database):
    """One aiosqlite connection per process, in WAL mode; transactions are BEGIN IMMEDIATE so
    several worker processes can share the file. A lock keeps this process's users in turn."""

    dialect = SQLITE
    local_clock = True

    def __init__(self, path: Path, wake: bool = True) -> None:
        self.path = path
        self.wake = wake
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._handed_off = False     # the current transaction was cut and its lock handed to a clean-up task

    @classmethod
    def from_config(cls, config: DatabaseConfig) -> "SqliteDatabase":
        return cls(project_path(config.database), config.wake)

    async def open(self) -> None:
        import aiosqlite

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pending = aiosqlite.connect(str(self.path), isolation_level=None, timeout=60)
            # A lazily booted app is never closed; its connection thread must not keep the process alive.
            thread = getattr(pending, "_thread", None)
            if thread is not None:
                thread.daemon = True
            self._conn = await pending
            # A TEXT value that is not UTF-8 (written by another program) must not make every read of
            # its row fail: it would block the queue behind it. C-level str(), so no cost on the hot path.
            self._conn.text_factory = functools.partial(str, encoding="utf-8", errors="replace")
            await self._conn.execute("PRAGMA busy_timeout = 60000")
            await self._use_wal()
            await self._conn.execute("PRAGMA synchronous = NORMAL")
        except Exception as exc:  # sqlite3.OperationalError, OSError
            raise ConnectionFailed(f"Cannot open SQLite database at {self.path}: {exc}") from None

    async def _use_wal(self, patience: float = 60.0) -> None:
        """Switch the file to WAL unless it is already. On a fresh file in rollback mode the switch
        needs the file to itself, and SQLite answers "database is locked" at once, without waiting
        out the busy timeout, while another process holds a write lock on it: several workers
        opening a new file together hit that. So try again until the busy timeout would have
        lapsed; once one of them has switched, the mode is in the file and the others only read it."""
        deadline = time.monotonic() + patience
        pause = 0.005
        while True:
            try:
                async with self._conn.execute("PRAGMA journal_mode") as cur:
                    if (await cur.fetchone())[0].lower() == "wal":
                        return
                await self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def close(self) -> None:
        await self._close_wake()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    def _make_waker(self) -> Waker:
        return DataVersionWaker(self.path)        # every commit, of any process, changes it

    def describe(self) -> str:
        return f"SQLite at {self.path}"

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with self._lock:
            yield Session(self, self._conn)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        await self._lock.acquire()
        self._handed_off = False
        try:
            await self._control("BEGIN IMMEDIATE")
            try:
                yield Session(self, self._conn)
            except BaseException:
                await self._control("ROLLBACK")
                raise
            try:
                await self._control("COMMIT")
            except Exception:
                if self._conn.in_transaction:    # a COMMIT that failed (busy) leaves the transaction open
                    await self._control("ROLLBACK")
                raise
        finally:
            if not self._handed_off:
                self._lock.release()

    async def _control(self, statement: str) -> None:
        """BEGIN, COMMIT or ROLLBACK, run to its end even when the caller is cancelled: aiosqlite's
        thread runs a statement it was given whatever happens to the awaiting task, so a cut BEGIN
        would open a transaction later that nobody closes (every later write invisible to other
        processes, their writes "database is locked"). On a cut, a task takes the lock over, waits
        for the statement and rolls back what is left open; the caller's CancelledError goes on."""
        step = asyncio.ensure_future(self._conn.execute(statement))
        try:
            await asyncio.shield(step)
        except asyncio.CancelledError:
            self._handed_off = True
            task = asyncio.get_running_loop().create_task(self._clean_up(step))
            _CLEANUPS.add(task)
            task.add_done_callback(_CLEANUPS.discard)
            raise

    async def _clean_up(self, step: "asyncio.Future[Any]") -> None:
        conn = self._conn
        try:
            with contextlib.suppress(Exception):
                await step
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
        finally:
            self._lock.release()

    async def run_transaction(self, steps: Steps[T]) -> T:
        """The whole transaction (BEGIN IMMEDIATE, the steps, COMMIT or ROLLBACK) in one call in
        aiosqlite's thread: one hop instead of one per statement, and nothing is left open when
        the caller is cancelled. A cut caller's transaction is rolled back at its next statement,
        as a cut async transaction would be, unless it is already committing."""
        cut = threading.Event()
        async with self._lock:
            try:
                return await self._in_thread(self._transact, steps, cut)
            except asyncio.CancelledError:
                # The thread runs what it was given to the end; later calls queue behind it, so the
                # lock can go now.
                cut.set()
                raise

    def _transact(self, conn: sqlite3.Connection, steps: Steps[T], cut: threading.Event) -> T:
        """In aiosqlite's thread: run steps between BEGIN IMMEDIATE and COMMIT."""
        if cut.is_set():
            raise asyncio.CancelledError()      # cut before it began: nothing to do
        conn.execute("BEGIN IMMEDIATE")
        try:
            answer: Any = None
            while True:
                if cut.is_set():
                    raise asyncio.CancelledError()
                try:
                    statement = steps.send(answer)
                except StopIteration as stop:
                    result = stop.value
                    break
                answer = _run(conn, self.sql(statement.sql), statement.params, statement.rows)
            if cut.is_set():
                raise asyncio.CancelledError()
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:         # also a COMMIT that failed (busy): it leaves the transaction open
                conn.execute("ROLLBACK")
            raise

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(the sqlite3 connection, *args), called in aiosqlite's thread, where every statement of
        this connection runs. aiosqlite has no public way to do that: Connection._execute(fn, *args)
        (aiosqlite 0.20-0.22; requirements.txt pins that range) queues fn on the thread, which runs it
        to its end whatever happens to the awaiting task. One hop per call instead of one per
        statement (and cursor step): the hops were most of the cost of a queue operation."""
        conn = self._conn
        return await conn._execute(fn, conn._conn, *args)

    async def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> int:
        return await self._in_thread(_run, self.sql(sql), tuple(params), False)

    async def _fetch(self, conn: Any, sql: str, params: Sequence[Any]) -> list[tuple]:
        return await self._in_thread(_run, self.sql(sql), tuple(params), True)


def _run(conn: sqlite3.Connection, sql: str, params: Sequence[Any], rows: bool) -> Any:
    """One statement on a plain sqlite3 connection: its rows, or the count of rows it changed."""
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall() if rows else cursor.rowcount
    finally:
        cursor.close()


class ServerDatabase(Database):
    """A database server reached through a pool (MySQL, PostgreSQL): each unit of work (a
    statement, a transaction) takes a connection and must end within DB_TIMEOUT seconds. A
    partitioned network never closes the socket, and neither driver has a read timeout: without
    this bound a worker would wait for good. A connection whose work was cut is closed, not
    pooled: an answer still on its way would reach the next user."""

    @classmethod
    def from_config(cls, config: DatabaseConfig) -> "ServerDatabase":
        return cls(config)

    def __init__(self, config: DatabaseConfig, maxsize: int = 10) -> None:
        self.config = config
        self.wake = config.wake
        self._maxsize = maxsize
        self._pool: Any = None

    def describe(self) -> str:
        return self.config.describe()

    def _wake_pace(self) -> Pace:
        c = self.config
        return Pace(f"{self.dialect.name}://{c.host}:{c.port}/{c.database}")

    async def _open_pool(self, make: Callable[[], Awaitable[Any]], reason: Callable[[BaseException], str]) -> None:
        """self._pool = await make(), within DB_TIMEOUT; a failure is ConnectionFailed, one line
        with `reason(exc)`."""
        c = self.config
        where = f"{self.dialect.label} at {c.host}:{c.port}"
        try:
            async with asyncio.timeout(c.timeout or None):
                self._pool = await make()
        except TimeoutError:
            raise ConnectionFailed(f"Cannot connect to {where}: no answer within {c.timeout:g}s (DB_TIMEOUT)") from None
        except Exception as exc:
            raise ConnectionFailed(f"Cannot connect to {where}: {reason(exc)}") from None

    async def _acquire(self) -> Any:
        return await self._pool.acquire()

    async def _release(self, conn: Any) -> None:
        await self._pool.release(conn)

    def _abandon(self, conn: Any) -> None:
        """Close a connection whose work was cut, at once (no round trip)."""
        conn.close()

    def _no_answer(self) -> TimeoutError:
        return TimeoutError(f"no answer from {self.describe()} within {self.config.timeout:g}s (DB_TIMEOUT)")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        timeout = self.config.timeout
        try:
            async with asyncio.timeout(timeout or None) as scope:
                conn = await self._acquire()
                try:
                    yield conn
                except asyncio.CancelledError:
                    self._abandon(conn)
                    raise
                finally:
                    await self._release(conn)
        except TimeoutError:
            if scope.expired():
                raise self._no_answer() from None
            raise

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        async with self._connection() as conn:
            yield Session(self, conn)


class MysqlDatabase(ServerDatabase):
    """An aiomysql pool in autocommit mode; transactions run at READ COMMITTED so that
    `FOR UPDATE SKIP LOCKED` locks only the rows it returns."""

    dialect = MYSQL
    batches = True

    def __init__(self, config: DatabaseConfig, maxsize: int = 10) -> None:
        super().__init__(config, maxsize)
        self._max_packet: int | None = None
        self._bus = SocketBus(f"mysql://{config.host}:{config.port}/{config.database}")

    async def open(self) -> None:
        import aiomysql
        import pymysql

        # "Table already exists" notes from CREATE TABLE IF NOT EXISTS are not news to a user.
        warnings.filterwarnings("ignore", category=pymysql.Warning)
        # client_flag FOUND_ROWS: an UPDATE counts the rows it matched, not only those it changed, so a
        # fenced update writing the values its row already holds (a repeated mark_failing) finds it.
        # MULTI_STATEMENTS: run_batch sends a transaction's statements in one packet.
        from pymysql.constants import CLIENT

        c = self.config
        await self._open_pool(lambda: aiomysql.create_pool(
            host=c.host, port=c.port, user=c.username, password=c.password, db=c.database,
            autocommit=True, client_flag=CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS, minsize=1, maxsize=self._maxsize,
            charset="utf8mb4", pool_recycle=3600, init_command="SET SESSION time_zone = '+00:00'"),
            describe_mysql_error)

    async def close(self) -> None:
        await self._close_wake()
        self._bus.close()
        pool = self._pool
        if pool is not None:
            # The pool stays this object's until it is closed: a unit of work still running gives its
            # connection back to it. aiomysql's wait_closed() is woken only by a connection it closes
            # itself, not by one a cut or cancelled unit of work closed (it would wait for good), so
            # the connections in use are waited for here (each unit of work ends within DB_TIMEOUT).
            pool.close()            # no connection is handed out from here on
            while pool.size > pool.freesize:
                await asyncio.sleep(0.01)
            await pool.wait_closed()
            self._pool = None

    def _make_waker(self) -> Waker:
        """No change counter, no notifications: workers on this host listen on the socket bus."""
        wakeups = Wakeups()
        self._bus.listen(wakeups)
        return wakeups

    def _wake_sender(self) -> Callable[[str], Awaitable[None]]:
        return self._bus.send

    async def max_packet(self) -> int:
        """The server's max_allowed_packet in bytes (read once): no statement may be longer."""
        if self._max_packet is None:
            row = await self.fetchone("SELECT @@max_allowed_packet")
            self._max_packet = int(row[0]) if row else 4 * 2**20
        return self._max_packet

    def lock_conflict(self, exc: BaseException) -> bool:
        import pymysql

        return isinstance(exc, pymysql.err.OperationalError) and bool(exc.args) and exc.args[0] in LOCK_CONFLICTS

    def connection_error(self, exc: BaseException) -> str | None:
        import pymysql

        if isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] in DISCONNECTED:
            return describe_mysql_error(exc)
        if isinstance(exc, pymysql.err.InterfaceError):     # a connection closed under its user
            return describe_mysql_error(exc) if exc.args and exc.args[-1] else "connection closed"
        if isinstance(exc, OSError):                         # TimeoutError from _connection, resets
            return os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        return None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        async with self._connection() as conn:
            if not getattr(conn, "_read_committed", False):
                async with conn.cursor() as cursor:
                    await cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                conn._read_committed = True
            await conn.begin()
            try:
                yield Session(self, conn)
            except asyncio.CancelledError:
                conn.close()        # cut off: the server rolls back a transaction whose connection is gone
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise
            await conn.commit()

    async def run_batch(self, statements: Sequence[Statement]) -> list[Any]:
        """One packet: START TRANSACTION, the statements, COMMIT. The server runs them through
        without waiting for this process: a worker whose loop job code blocks between two round
        trips held an acknowledgement's row locks all that time, so its heartbeat (which skips
        locked rows) renewed nothing, and a connection cut then rolled the acknowledgement back
        after the reservation had lapsed: the job ran twice. A statement that fails stops the
        server there (the rest does not run) and the transaction is rolled back. Cut off, the batch
        may still commit on the server: the caller's retry finds the rows gone, as after a lost
        COMMIT answer."""
        sql = ";".join(["SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "START TRANSACTION",
                        *(self.sql(statement.sql) for statement in statements), "COMMIT"])
        params = tuple(value for statement in statements for value in statement.params)
        async with self._connection() as conn:
            cursor = await conn.cursor()      # not `async with`: its close reads what is left
            try:
                await cursor.execute(sql, params or None)     # SET TRANSACTION
                await cursor.nextset()                        # START TRANSACTION
                answers: list[Any] = []
                for statement in statements:
                    await cursor.nextset()
                    answers.append(list(await cursor.fetchall()) if statement.rows else cursor.rowcount)
                await cursor.nextset()                        # COMMIT
                await cursor.close()
                return answers
            except asyncio.CancelledError:
                conn.close()
                raise
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise

    async def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> int:
        async with conn.cursor() as cursor:
            return await cursor.execute(self.sql(sql), tuple(params) or None)

    async def _fetch(self, conn: Any, sql: str, params: Sequence[Any]) -> list[tuple]:
        async with conn.cursor() as cursor:
            await cursor.execute(self.sql(sql), tuple(params) or None)
            return list(await cursor.fetchall())


# Client and server error codes that mean the connection is gone or cannot be made: can't connect
# (2002, 2003), server gone away or lost (2006, 2013, 2055), shutting down (1053), connection
# killed (1927), too many connections (1040).
# Deadlock found (1213), lock wait timeout exceeded (1205): the server rolled the transaction back.
LOCK_CONFLICTS = {1213, 1205}
DISCONNECTED = {2002, 2003, 2006, 2013, 2055, 1053, 1927, 1040}


def describe_mysql_error(exc: BaseException) -> str:
    """The server's own words for a MySQL error, without the driver's tuple wrapping."""
    args: tuple[Any, ...] = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[1], str):
        message = args[1]
        if "Can't connect" in message:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, socket.gaierror):   # an unknown host: errno -2, which os.strerror cannot name
                return cause.strerror or str(cause)
            if code := getattr(cause, "errno", None):
                return os.strerror(code)
            return str(cause) if cause else "connection refused"
        return message
    return str(exc) or type(exc).__name__
