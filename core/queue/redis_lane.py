"""A connection of the Redis queue's own for script calls, driven directly: send, read the answer.

A call through the redis-py client checks a connection out of the pool and back, passes through
its retry and observability layers, and puts the send and the read each under a timer of its own
(on Python 3.11 the send's is a whole task): together about half again a bare round trip, and
most of what a dispatch cost beyond the round trip itself. The lane writes to one connection it
keeps and reads the answer with the connection's own parser; the socket timeout is kept by one
watch that looks at the call in flight once a second, instead of two timers per call.

It carries one call at a time. A call that finds it busy (concurrent dispatches, a worker's
acknowledgements beside its reserves) goes through the client as before, so concurrency still
spreads over the pool. What the client's retry did is kept: a call the lane could not complete
for a dropped connection is made again through the client, which retries on a fresh connection
(the push and the other scripts tolerate a second run, as they did under that retry). A call
with no answer within the socket timeout raises redis' TimeoutError, as the client does, and is
not retried. Any error or cancellation mid-call closes the lane's connection (redis-py does that
itself) and the next call opens it again.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Sequence
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript

WATCH_EVERY = 1.0           # how often the call in flight is looked at (the timeout's precision)


class Lane:
    def __init__(self, client: Redis) -> None:
        self._conn: AbstractConnection = client.connection_pool.make_connection()
        self._limit = self._conn.socket_timeout
        self.busy = False
        self._since: float | None = None        # when the call in flight was sent
        self._expired = False                   # the watch cut the call in flight
        self._watch: asyncio.TimerHandle | None = None

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self.busy:
            return await script(keys=list(keys), args=list(args))
        conn = self._conn
        if not self._write(script, keys, args):     # not connected yet, or no timeout to keep: redis-py's way
            self.busy = True
            try:
                await conn.send_packed_command(_pack(conn, ("EVALSHA", script.sha, len(keys), *keys, *args)),
                                               check_health=False)
                return await conn.read_response()
            except (redis_errors.NoScriptError, redis_errors.ConnectionError):
                pass        # the server lost its scripts (a restart), or the connection dropped: below
            finally:
                self.busy = False
            return await script(keys=list(keys), args=list(args))   # reloads the script; retries the connection
        return await self._answer(script, keys, args, drain=True)

    def send(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Sent | None:
        """Write a call now and read its answer later (`await sent.answer()`), so that the caller's own
        work overlaps the round trip; None when the lane cannot write at once (busy, not connected,
        no timeout to keep): then nothing was sent. Until the answer is read the lane is busy (other
        calls go through the client); the caller must read it."""
        if self.busy or not self._write(script, keys, args):
            return None
        return Sent(self, script, keys, args)

    def _write(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> bool:
        """Write the call to the lane's connection, leaving the lane busy with it; False (lane left as
        it was) when it is not connected or keeps no timeout. A part the socket did not take goes
        out as it can (the transport writes it when the socket drains)."""
        conn = self._conn
        writer = getattr(conn, "_writer", None) if conn.is_connected else None
        if writer is None or not self._limit:
            return False
        command = _pack(conn, ("EVALSHA", script.sha, len(keys), *keys, *args))
        self.busy = True
        self._since = self._watched().time()
        writer.writelines(command)
        return True

    async def _answer(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any], drain: bool = False) -> Any:
        """Read the answer of the call _write sent (first, with `drain`, wait until the socket took a
        large write); what the client's retry did is kept (below)."""
        try:
            writer = getattr(self._conn, "_writer", None)
            if drain and writer is not None and writer.transport.get_write_buffer_size():
                await _drain(self._conn, writer)
            return await self._conn.read_response(timeout=math.inf)   # the watch keeps the timeout
        except (redis_errors.NoScriptError, redis_errors.ConnectionError):
            if self._expired:
                raise redis_errors.TimeoutError(f"Timeout reading from Redis after {self._limit:g}s") from None
            # The server lost its scripts (a restart), or the connection dropped: below.
        finally:
            self.busy, self._since, self._expired = False, None, False
        return await script(keys=list(keys), args=list(args))   # reloads the script; retries the connection

    def _watched(self) -> asyncio.AbstractEventLoop:
        """The running loop, with the watch started on it (at the first call)."""
        loop = asyncio.get_running_loop()
        if self._watch is None:
            self._watch = loop.call_later(WATCH_EVERY, self._look)
        return loop

    def _look(self) -> None:
        """Cut a call that has waited over the socket timeout: abort the connection, so the read
        (or the drain) fails at once; run() turns that into a TimeoutError."""
        loop = asyncio.get_running_loop()
        if self._since is not None and loop.time() - self._since >= self._limit:
            writer = getattr(self._conn, "_writer", None)
            if writer is not None:
                self._expired = True
                writer.transport.abort()
        self._watch = loop.call_later(WATCH_EVERY, self._look)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        await self._conn.disconnect()


class Sent:
    """A call Lane.send wrote; `answer()` reads what the store answered (once)."""

    __slots__ = ("_lane", "_script", "_keys", "_args")

    def __init__(self, lane: Lane, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> None:
        self._lane, self._script, self._keys, self._args = lane, script, keys, args

    def answer(self) -> Coroutine[Any, Any, Any]:
        return self._lane._answer(self._script, self._keys, self._args)


def _pack(conn: AbstractConnection, command: tuple[Any, ...]) -> list[bytes]:
    """hiredis packs text, numbers and bytes as they are (redis-py's wrapper around it copies the
    arguments first). Text that is not valid UTF-8 (read back under surrogateescape) goes to the
    connection's own packing, which sends the original bytes."""
    try:
        return [hiredis.pack_command(command)]
    except (UnicodeEncodeError, TypeError):
        return conn.pack_command(*command)


async def _drain(conn: AbstractConnection, writer: asyncio.StreamWriter) -> None:
    """Wait until the socket has taken a large write (a dead peer: until the watch aborts it)."""
    try:
        await writer.drain()
    except BaseException as exc:
        await conn.disconnect(nowait=True)
        if isinstance(exc, OSError):
            raise redis_errors.ConnectionError(f"Error while writing to socket: {exc}") from exc
        raise
