"""Heartbeat: renews the reservations a worker holds, and the locks its job code holds (WithoutOverlapping),
from a thread with its own event loop and store connection.

Locks are renewed in the same beat as the reservations and for as long (a visibility timeout), so a
killed worker's lock lapses with its reservation; a lock is renewed while its code runs, even code
left behind by the watchdog whose reservation is gone.

On the worker's loop, renewals waited for job code that blocks the loop: jobs reserved in one call
that each block within their own timeout run one after another in one pass of the loop (four of
1.4 s: 5.6 s), longer than the visibility timeout, and the reservations behind them lapsed. Here
only job code holding the GIL in C code delays a renewal; the watchdog's hard limit ends that.

The thread opens its own QueueManager, so each store's `extend` serves unchanged (SQLite: a second
connection to the same file, which WAL and busy_timeout share out). The worker reserves nothing until
that connection is open (`until_open`), which it tries again every beat. On Redis it opens without the
failed-job database (RedisQueue.failed_store): when opening it opened that too, a heartbeat that started
as that database went away renewed nothing until it came back, and the jobs its worker reserved
meanwhile lapsed and ran twice (a chaos run, its failed store cut for 6 s).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from core.log import redact
from core.outage import OutageLog
from core.queue.contract import QueueConnection, ReservedJob
from core.queue.manager import QueueManager

if TYPE_CHECKING:
    from core.app import Application

log = logging.getLogger("worker")
STOP_PATIENCE = 5.0     # seconds a renewal in flight may take to finish at stop before it is cancelled
HEARTBEAT_MAX = 2.0     # seconds between renewals at most: one store call per queue connection


def heartbeat_interval(visibility_timeout: float) -> float:
    """Seconds between renewals of the running jobs' reservations."""
    return min(visibility_timeout / 4, HEARTBEAT_MAX)


class Heartbeat:
    """Every `interval` from the start of the last renewal, extends the reservations `held()` returns.

    `held` and `locks` (the (key, owner) locks to renew for `lock_ttl` seconds) are called from the
    heartbeat's thread: they must copy what the worker's loop changes under a lock.
    """

    def __init__(self, app: "Application", connection: str | None, interval: float,
                 held: Callable[[], Sequence[ReservedJob]], outage: OutageLog, secrets: list[str],
                 locks: Callable[[], Sequence[tuple[str, str]]] = list, lock_ttl: float = 0,
                 cancel: Callable[[list[str]], None] | None = None) -> None:
        self.app = app
        self.cancel = cancel        # called (from this thread) with the ids of held jobs someone cancelled
        self.connection = connection
        self.interval = interval
        self.held = held
        self.locks = locks
        self.lock_ttl = lock_ttl
        self._lost: set[tuple[str, str]] = set()        # locks already reported as no longer held
        self.outage = outage
        self.secrets = secrets
        self._stop = threading.Event()
        self._lock = threading.Lock()                   # guards _loop/_wake/_task against the thread's end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._opened: asyncio.Event | None = None      # on the worker's loop: set once the connection is open
        self._owner: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name="heartbeat", daemon=True)

    def start(self) -> None:
        """From the worker's loop."""
        self._opened = asyncio.Event()
        self._owner = asyncio.get_running_loop()
        self._thread.start()

    async def until_open(self, stopping: asyncio.Event) -> None:
        """Until the heartbeat can renew (its connection is open), or the worker is told to stop."""
        assert self._opened is not None, "start() first"
        if self._opened.is_set():
            return
        waits = [asyncio.ensure_future(self._opened.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def stop(self) -> None:
        """Stop renewing and close the thread's connection. A renewal in flight finishes first (cut
        mid-call, a database driver may find its pool gone); it is cancelled only if the store keeps
        it waiting past STOP_PATIENCE."""
        self._stop.set()
        self._call(lambda: self._wake.set())            # type: ignore[union-attr]
        await asyncio.to_thread(self._thread.join, STOP_PATIENCE)
        if self._thread.is_alive():
            self._call(lambda: self._task.cancel())     # type: ignore[union-attr]
            await asyncio.to_thread(self._thread.join, STOP_PATIENCE)

    def _call(self, fn: Callable[[], object]) -> None:
        """Run fn on the thread's loop, if it is still running."""
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(fn)

    # -- in the heartbeat's thread ----------------------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._beat())

    async def _beat(self) -> None:
        with self._lock:
            self._loop, self._wake, self._task = asyncio.get_running_loop(), asyncio.Event(), asyncio.current_task()
        manager = QueueManager(self.app)
        try:
            # Opened again every interval until it opens: the worker waits for it (until_open).
            conn = None
            while not self._stop.is_set():
                began = time.monotonic()
                if conn is None:
                    conn = await self._open(manager)
                held, locks = self.held(), self.locks()
                if conn is not None and (held or locks):
                    await self._renew(conn, held, locks)
                await self._pause(max(0.0, began + self.interval - time.monotonic()))
        finally:
            with self._lock:
                self._loop = None
            await manager.close()

    async def _pause(self, seconds: float) -> None:
        """Until the next renewal is due, or stop() wakes the thread."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)      # type: ignore[union-attr]

    async def _open(self, manager: QueueManager) -> QueueConnection | None:
        try:
            conn = await manager.connection(self.connection)
        except Exception as exc:     # tried again at the next beat
            self._report(exc, "open a connection for renewals")
            return None
        if self._owner is not None and self._opened is not None:
            self._owner.call_soon_threadsafe(self._opened.set)
        return conn

    async def _renew(self, conn: QueueConnection, held: Sequence[ReservedJob],
                     locks: Sequence[tuple[str, str]]) -> None:
        try:
            if held:
                cancelled = await conn.extend(held)      # SPEC 11: cancel requests come with the renewal
                if cancelled and self.cancel is not None:
                    self.cancel(list(cancelled))
            if locks:
                self._note_lost(locks, await conn.state.lock_renew(locks, self.lock_ttl))
        except Exception as exc:
            self._report(exc, "extend reservations and locks")

    def _note_lost(self, locks: Sequence[tuple[str, str]], renewed: Sequence[bool]) -> None:
        """A lock that lapsed while its code still runs (renewals were held up past its ttl): once each.
        One freed since `locks` was read is not held any more either: only those still held count."""
        still = set(self.locks()) if not all(renewed) else set()
        for lock, kept in zip(locks, renewed):
            if not kept and lock in still and lock not in self._lost:
                self._lost.add(lock)
                log.warning("Lock %s lapsed while its job was still running (owner %s); another job may take it",
                            lock[0], lock[1])

    def _report(self, exc: Exception, action: str) -> None:
        if not self.outage.failed(exc):     # an outage is one line (the worker's loop reports its end)
            log.error("Could not %s: %s", action, redact(str(exc) or type(exc).__name__, self.secrets))
