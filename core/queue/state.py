"""State that job middleware keeps (SPEC 9): rate limits, overlap locks, exception circuits.

It lives in the queue's own store (no other service), each operation one atomic step, timed on
the store's clock so that workers on skewed hosts agree. A connection offers it as `conn.state`:
the database and Redis connections keep it in their store (state_database.py, state_redis.py);
`LocalState` keeps it in this process, for the sync connection, where only this process runs jobs.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


class MiddlewareState(ABC):
    """Keys are the user's names ("vendor-api", "device:7"); each kind of state has its own space."""

    @abstractmethod
    async def limit_hit(self, key: str, allow: int, every: float) -> float:
        """One start under a sliding window: at most `allow` starts in any `every` seconds.
        0.0 = admitted and counted; else the seconds until a start may be admitted (not counted)."""

    @abstractmethod
    async def lock_acquire(self, key: str, owner: str, ttl: float) -> bool:
        """Take the lock for `ttl` seconds if it is free, lapsed, or already this owner's (then
        its expiry is renewed). False if another owner holds it."""

    @abstractmethod
    async def lock_renew(self, locks: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        """Renew (key, owner) locks for `ttl` seconds from now; one answer per lock, False where
        the owner no longer holds it (it lapsed, or passed to another owner)."""

    @abstractmethod
    async def lock_free(self, key: str, owner: str) -> bool:
        """Free the lock if `owner` holds it; False (and nothing changes) otherwise."""

    @abstractmethod
    async def throttle_open_for(self, key: str) -> float:
        """Seconds the circuit stays open; 0.0 = closed."""

    @abstractmethod
    async def throttle_failure(self, key: str, max_exceptions: int, decay: float) -> float:
        """One more consecutive failure. From the `max_exceptions`th on, each opens the circuit for
        `decay` seconds (so once it closes again, the next failure reopens it: half-open). The
        count is forgotten `decay` seconds after the circuit would have closed. Returns open-for."""

    @abstractmethod
    async def throttle_success(self, key: str) -> None:
        """Close the circuit and forget its failures."""


@dataclass
class Circuit:
    failures: int = 0
    open_until: float = 0.0
    forget_at: float = 0.0


def next_circuit(circuit: Circuit | None, now: float, max_exceptions: int, decay: float) -> Circuit:
    """The circuit after one more failure at `now` (None or forgotten: no failures so far).
    Shared by every store that computes outside the store (the database and this process)."""
    failures = circuit.failures if circuit is not None and circuit.forget_at > now else 0
    open_until = circuit.open_until if circuit is not None and circuit.forget_at > now else 0.0
    failures += 1
    if failures >= max_exceptions:
        open_until = now + decay
    return Circuit(failures, open_until, max(now, open_until) + decay)


class LocalState(MiddlewareState):
    """In this process only, on its monotonic clock: right for the sync connection, where jobs run
    in the dispatching process; never shared between workers."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._circuits: dict[str, Circuit] = {}

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    async def limit_hit(self, key: str, allow: int, every: float) -> float:
        now = self._now()
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - every:
            hits.popleft()
        if len(hits) < allow:
            hits.append(now)
            return 0.0
        return max(hits[0] + every - now, 1e-6)       # allow >= 1: the window holds a start

    async def lock_acquire(self, key: str, owner: str, ttl: float) -> bool:
        now = self._now()
        held = self._locks.get(key)
        if held is not None and held[1] > now and held[0] != owner:
            return False
        self._locks[key] = (owner, now + ttl)
        return True

    async def lock_renew(self, locks: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        now, renewed = self._now(), []
        for key, owner in locks:
            held = self._locks.get(key)
            mine = held is not None and held[0] == owner and held[1] > now
            if mine:
                self._locks[key] = (owner, now + ttl)
            renewed.append(mine)
        return renewed

    async def lock_free(self, key: str, owner: str) -> bool:
        held = self._locks.get(key)
        if held is None or held[0] != owner or held[1] <= self._now():
            return False
        del self._locks[key]
        return True

    async def throttle_open_for(self, key: str) -> float:
        circuit, now = self._circuits.get(key), self._now()
        if circuit is None or circuit.forget_at <= now:
            return 0.0
        return max(0.0, circuit.open_until - now)

    async def throttle_failure(self, key: str, max_exceptions: int, decay: float) -> float:
        now = self._now()
        circuit = self._circuits[key] = next_circuit(self._circuits.get(key), now, max_exceptions, decay)
        return max(0.0, circuit.open_until - now)

    async def throttle_success(self, key: str) -> None:
        self._circuits.pop(key, None)
