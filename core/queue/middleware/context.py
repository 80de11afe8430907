"""The attempt a job's middleware runs in: the connection, the reservation, and the locks held.

The worker sets it per attempt (`with attempt_context(conn, reserved, vt) as attempt:` around the
job's pipeline; a task created inside sees it too). Middleware that keeps state in the queue's
store reaches it through `current_attempt()`. A lock taken for the attempt (WithoutOverlapping) is
registered here: the worker's heartbeat renews it with the reservation (`renew_locks()`), and once
the job's code has really ended the worker frees what is left (`release_locks()`), so a killed
worker's lock lapses with its reservation and a live one's is never left behind.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from core.queue.contract import QueueConnection, ReservedJob
from core.queue.state import MiddlewareState

log = logging.getLogger("worker")


@dataclass(frozen=True)
class HeldLock:
    key: str
    owner: str
    renew: bool          # renewed with the reservation; False: its own expire_after caps it


@dataclass(slots=True)
class AttemptContext:
    connection: QueueConnection
    reserved: ReservedJob
    visibility_timeout: float
    locks: list[HeldLock] = field(default_factory=list)
    # Called with this context when it takes its first lock: the worker then keeps it where its
    # heartbeat renews the locks. Most attempts take none, and cost the worker nothing more.
    on_lock: Callable[["AttemptContext"], None] | None = None

    @property
    def state(self) -> MiddlewareState:
        return self.connection.state

    @property
    def owner(self) -> str:
        """Who holds a lock taken in this attempt: the job and this reservation of it, so a
        later attempt of the same job (after this one's reservation was lost) is someone else."""
        return f"{self.reserved.id}:{self.reserved.token}"

    def hold(self, key: str, renew: bool = True) -> HeldLock:
        lock = HeldLock(key, self.owner, renew)
        self.locks.append(lock)
        if len(self.locks) == 1 and self.on_lock is not None:
            self.on_lock(self)
        return lock

    def held_locks(self) -> list[tuple[str, str]]:
        """(key, owner) of the locks the heartbeat renews with the reservation."""
        return [(lock.key, lock.owner) for lock in self.locks if lock.renew]

    async def renew_locks(self) -> list[bool]:
        """Renew the held locks for a visibility timeout, as the reservation is renewed."""
        held = self.held_locks()
        return await self.state.lock_renew(held, self.visibility_timeout) if held else []

    async def free_lock(self, lock: HeldLock) -> bool:
        """Free one lock; it stays registered (for release_locks) if the store could not be told."""
        freed = await self.state.lock_free(lock.key, lock.owner)
        with contextlib.suppress(ValueError):
            self.locks.remove(lock)
        return freed

    async def release_locks(self) -> None:
        """Free every lock still registered: the attempt is over. A store that cannot be reached
        is logged, not raised: the lock then lapses by itself within its ttl."""
        for lock in list(self.locks):
            try:
                await self.free_lock(lock)
            except Exception as exc:  # noqa: BLE001  (an outage: the lock lapses)
                log.warning("could not free lock %s: %s; it lapses by itself", lock.key, exc)


_current: ContextVar[AttemptContext | None] = ContextVar("attempt", default=None)


def current_attempt() -> AttemptContext:
    attempt = _current.get()
    if attempt is None:
        raise RuntimeError("this job middleware keeps state in the queue's store and runs only in a worker's "
                           "attempt (no attempt context is set)")
    return attempt


# The worker's per-job form of attempt_context (a generator-based context manager costs more):
# enter(context) makes `context` the current attempt's (of this task, and of tasks it creates) and
# returns a token; leave(token) undoes it. The ContextVar's own methods: no Python call between.
enter: Callable[[AttemptContext], Token[AttemptContext | None]] = _current.set
leave: Callable[[Token[AttemptContext | None]], None] = _current.reset


@contextlib.contextmanager
def attempt_context(connection: QueueConnection, reserved: ReservedJob,
                    visibility_timeout: float) -> Iterator[AttemptContext]:
    attempt = AttemptContext(connection, reserved, visibility_timeout)
    token = _current.set(attempt)
    try:
        yield attempt
    finally:
        _current.reset(token)
