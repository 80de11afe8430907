"""Job middleware state (SPEC 9) in the queue's Redis, each operation one Lua script (lua/*.lua).

    <prefix>{lim:<key>}:hits      zset    RateLimited: one member per start in the window, score = time
    <prefix>{lim:<key>}:lock      string  WithoutOverlapping: the owner, expiring with the lock (PX)
    <prefix>{lim:<key>}:throttle  hash    ThrottlesExceptions: failures, open_until

Every script touches one key, tagged `{lim:<key>}`, so in Redis Cluster it runs on one node;
times are the server's (TIME, and key expiry), one clock for every worker.
"""
from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.queue.state import MiddlewareState

LUA = Path(__file__).resolve().parent / "lua"
SCRIPTS = ("limit_hit", "lock_acquire", "lock_renew", "lock_free", "throttle_failure", "throttle_open")


def _ms(seconds: float) -> int:
    return max(1, round(float(seconds) * 1000))


class RedisState(MiddlewareState):
    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._scripts = {name: client.register_script((LUA / f"{name}.lua").read_text()) for name in SCRIPTS}

    def key(self, key: str, kind: str) -> str:
        return f"{self.prefix}{{lim:{key}}}:{kind}"

    async def _run(self, script: str, key: str, *args: Any) -> Any:
        return await self._scripts[script](keys=[key], args=list(args))

    async def limit_hit(self, key: str, allow: int, every: float) -> float:
        wait = await self._run("limit_hit", self.key(key, "hits"), int(allow), float(every), secrets.token_hex(8))
        return float(wait)

    async def lock_acquire(self, key: str, owner: str, ttl: float) -> bool:
        return await self._run("lock_acquire", self.key(key, "lock"), owner, _ms(ttl)) == 1

    async def lock_renew(self, locks: Sequence[tuple[str, str]], ttl: float) -> list[bool]:
        # One script per lock: locks of different keys may sit on different cluster nodes.
        return [await self._run("lock_renew", self.key(key, "lock"), owner, _ms(ttl)) == 1 for key, owner in locks]

    async def lock_free(self, key: str, owner: str) -> bool:
        return await self._run("lock_free", self.key(key, "lock"), owner) == 1

    async def throttle_open_for(self, key: str) -> float:
        return float(await self._run("throttle_open", self.key(key, "throttle")))

    async def throttle_failure(self, key: str, max_exceptions: int, decay: float) -> float:
        return float(await self._run("throttle_failure", self.key(key, "throttle"), int(max_exceptions), float(decay)))

    async def throttle_success(self, key: str) -> None:
        await self.client.delete(self.key(key, "throttle"))
