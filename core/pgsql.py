"""PostgreSQL through asyncpg (DB_CONNECTION=pgsql): a pool in autocommit mode, READ COMMITTED
transactions (the server's default), and wake-up by LISTEN/NOTIFY (SPEC 17).

Wake-up: a dispatcher sends `pg_notify(CHANNEL, queue)` after its push committed, as a statement
of its own (a NOTIFY inside the push's transaction would take the server's global notify lock at
every commit: the commits of all dispatchers would run one at a time), paced per queue and
process by core.wake.Announcer. A worker process holds one more connection, outside the
pool, that LISTENs; it is pinged every LISTEN_PING seconds (a partitioned network closes
nothing), and when it drops it is opened again with backoff, and the waiting worker reserves at
once: notifications sent in the gap are lost. DB_LISTEN_URL gives the server's own address for it
where DB_HOST is a transaction pooler (PgBouncer), which cannot LISTEN.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from core.config import DatabaseConfig
from core.database import ServerDatabase, Session
from core.dialects import PGSQL
from core.wake import Waker, Wakeups

log = logging.getLogger("worker")

CHANNEL = "queue_jobs"        # notifications reach the listeners of the same database only
# A statement, so a transaction of its own, whose commit does not wait for the disk (set_config's
# true: for this transaction only): a notification takes a transaction id, so its commit would
# otherwise cost a WAL flush, and a notification lost in a server crash costs a worker at most --sleep.
NOTIFY = "SELECT set_config('synchronous_commit', 'off', true), pg_notify(?, ?)"
IDLE_CHECK = 0.5              # seconds idle in the pool after which a connection is looked at before use
LISTEN_PING = 5.0             # seconds between two checks that the listening connection is alive
# SQLSTATEs: deadlock (40P01), serialization failure (40001), lock not available (55P03): the server
# rolled the transaction back. Connection exceptions are class 08, shutdowns 57P01-57P03, too many
# connections 53300.
LOCK_CONFLICTS = {"40P01", "40001", "55P03"}
DISCONNECTED = {"57P01", "57P02", "57P03", "53300"}


class PgsqlDatabase(ServerDatabase):
    dialect = PGSQL
    _wake_carried = True          # a NOTIFY takes a pooled connection

    def __init__(self, config: DatabaseConfig, maxsize: int = 10) -> None:
        super().__init__(config, maxsize)
        self._listener: asyncio.Task[None] | None = None
        self._pids: dict[int, int] = {}            # id() of a connection in use -> its server pid
        self._released: dict[int, float] = {}      # a pooled connection's server pid -> when it was last released

    async def open(self) -> None:
        import asyncpg

        c = self.config
        await self._open_pool(lambda: asyncpg.create_pool(
            host=c.host, port=c.port, user=c.username, password=c.password or None, database=c.database,
            min_size=0, max_size=self._maxsize, reset=_keep, server_settings={"TimeZone": "UTC"}), describe_error)
        # reset=_keep: asyncpg's default runs a reset query at every release (a round trip per
        # statement); our connections keep no session state. min_size 0: no floor, which asyncpg
        # restores in the background, logging a traceback at each try while the server is away.
        # So the first connection is made here, to check the server is there.
        await self._open_pool(self._first_connection, describe_error)

    async def _first_connection(self) -> Any:
        pool = self._pool
        await pool.release(await pool.acquire())
        return pool

    async def close(self) -> None:
        await self._close_wake()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        pool = self._pool
        if pool is not None:        # still this object's while it closes: work still running gives back to it
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await pool.close()
            pool.terminate()
            self._pool = None

    # -- errors -----------------------------------------------------------------------------

    def lock_conflict(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) in LOCK_CONFLICTS

    def connection_error(self, exc: BaseException) -> str | None:
        import asyncpg

        state = getattr(exc, "sqlstate", None)
        if isinstance(exc, asyncpg.PostgresConnectionError) or state in DISCONNECTED or \
                (isinstance(state, str) and state.startswith("08")):
            return describe_error(exc)
        if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
            return "connection closed"
        if isinstance(exc, OSError):
            return describe_error(exc)
        return None

    # -- sessions ---------------------------------------------------------------------------

    async def _acquire(self) -> Any:
        """A pooled connection that is not known to be dead. One that sat idle for a while may
        have been reset under it (a partition healed, a server restarted) with the news still
        unread: three passes of the event loop read it, and a dead one is replaced."""
        import asyncpg

        loop = asyncio.get_running_loop()
        for _ in range(self._maxsize + 1):
            conn = await self._pool.acquire()
            pid = conn.get_server_pid()
            if loop.time() - self._released.get(pid, 0.0) >= IDLE_CHECK:
                for _ in range(3):       # the socket's event, its read, then connection_lost: a pass each
                    await asyncio.sleep(0)
                try:
                    if conn.is_closed():
                        with contextlib.suppress(asyncpg.InterfaceError):
                            await self._pool.release(conn)
                        continue
                except asyncpg.InterfaceError:       # closing, the pool took it back itself
                    continue
            self._pids[id(conn)] = pid
            return conn
        raise ConnectionError("every pooled connection was closed")

    async def _release(self, conn: Any) -> None:
        pid = self._pids.pop(id(conn), None)
        if pid is not None:
            if len(self._released) > 4 * self._maxsize:
                self._released.clear()      # entries of connections gone
            self._released[pid] = asyncio.get_running_loop().time()
        await self._pool.release(conn)

    def _abandon(self, conn: Any) -> None:
        conn.terminate()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Session]:
        async with self._connection() as conn:
            await conn.execute("BEGIN")
            try:
                yield Session(self, conn)
            except asyncio.CancelledError:
                raise           # _connection terminates it: the server rolls back
            except BaseException:
                if not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    async def _execute(self, conn: Any, sql: str, params: Sequence[Any]) -> int:
        status = await conn.execute(self.sql(sql), *_storable(params))
        count = status.rpartition(" ")[2]           # "UPDATE 3", "INSERT 0 1", "CREATE TABLE"
        return int(count) if count.isdigit() else 0

    async def _fetch(self, conn: Any, sql: str, params: Sequence[Any]) -> list[tuple]:
        return [tuple(row) for row in await conn.fetch(self.sql(sql), *_storable(params))]

    # -- wake-up ----------------------------------------------------------------------------

    def _wake_sender(self) -> Callable[[str], Awaitable[None]]:
        return self._notify

    async def _notify(self, queue: str) -> None:
        await self.fetchall(NOTIFY, (CHANNEL, queue))

    def _make_waker(self) -> Waker:
        wakeups = Wakeups()
        self._listener = asyncio.get_running_loop().create_task(self._listen(wakeups))
        return wakeups

    async def _listen(self, wakeups: Wakeups) -> None:
        """Keep one connection LISTENing; after a gap, wake every waiting worker."""
        backoff, lost = 0.0, False
        while True:
            conn = None
            try:
                conn = await self._listen_connection()
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
                await conn.add_listener(CHANNEL, lambda _c, _pid, _channel, queue: wakeups.wake(queue))
                if lost:
                    log.info("Wake-up listener reconnected to %s", self._listen_where())
                wakeups.wake()        # notifications sent while it was away are lost: look now
                backoff, lost = 0.0, False
                while not closed.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LISTEN_PING):
                            await closed.wait()
                    if not closed.is_set():
                        async with asyncio.timeout(max(1.0, self.config.timeout or LISTEN_PING)):
                            await conn.fetchval("SELECT 1")
                raise ConnectionError("connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not lost:
                    log.warning("Wake-up listener lost %s (%s); reconnecting. Jobs are still found every --sleep",
                                self._listen_where(), describe_error(exc))
                lost = True
            finally:
                if conn is not None:
                    conn.terminate()
            backoff = min(10.0, backoff * 2 or 0.5)
            await asyncio.sleep(backoff)

    async def _listen_connection(self) -> Any:
        import asyncpg

        c = self.config
        async with asyncio.timeout(c.timeout or None):
            if c.listen_url:
                return await asyncpg.connect(dsn=c.listen_url)
            return await asyncpg.connect(host=c.host, port=c.port, user=c.username, password=c.password or None,
                                         database=c.database)

    def _listen_where(self) -> str:
        return "PostgreSQL at DB_LISTEN_URL" if self.config.listen_url else self.describe()


def _storable(params: Sequence[Any]) -> Sequence[Any]:
    """Text PostgreSQL takes: it has no NUL character, and UTF-8 has no lone surrogate (a JSON
    payload may spell either, and a job's uuid, exception or class path read from it may hold
    one). Each becomes U+FFFD, as storable() does for failed rows on every database; the same
    value always becomes the same text, so a uuid found this way still finds its row."""
    if not any(type(value) is str and (not value.isascii() or "\x00" in value) for value in params):
        return params
    return [_text(value) if type(value) is str else value for value in params]


def _text(value: str) -> str:
    if not value.isascii():
        value = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value.replace("\x00", "\ufffd")


async def _keep(conn: Any) -> None:
    """A pool's reset that does nothing (see open)."""


def describe_error(exc: BaseException) -> str:
    """The server's or the system's own words for an error, one line."""
    if isinstance(exc, socket.gaierror):     # an unknown host: errno -2, which os.strerror cannot name
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
