"""QueueManager: turns a connection name from config into an open QueueConnection, lazily."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from core.config import Config
from core.database import Database
from core.errors import ConfigError
from core.queue.contract import QueueConnection
from core.queue.failed import FailedJobStore

if TYPE_CHECKING:
    from core.app import Application

CONNECTIONS = ("database", "redis", "sync")


class QueueManager:
    def __init__(self, app: "Application") -> None:
        self.app = app
        self.config: Config = app.config
        self._connections: dict[str, QueueConnection] = {}
        self._database: Database | None = None
        self._failed: FailedJobStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._opening: asyncio.Lock | None = None
        self._closer: AsyncGenerator[None, None] | None = None

    def _check_loop(self) -> None:
        # Connections belong to the event loop that opened them; a new loop (a second
        # asyncio.run in a script or test) gets fresh ones.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._opening = loop, asyncio.Lock(), asyncio.Lock()
            self._connections, self._database, self._failed, self._closer = {}, None, None, None

    async def _enter_loop(self) -> None:
        """_check_loop, and on a loop's first use arrange for its end to close what it opens."""
        self._check_loop()
        if self._closer is None:
            self._closer = self._close_with_loop()
            await self._closer.__anext__()

    async def _close_with_loop(self) -> AsyncGenerator[None, None]:
        """Closes this loop's connections when the loop shuts down. asyncio.run (and any loop's
        shutdown_asyncgens) closes the async generators still open, inside the loop: a lazily
        booted app, never closed by its user, would otherwise leave its MySQL connections to be
        collected after the loop is gone ("Event loop is closed" at exit)."""
        loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            if self._loop is loop:
                await self.close()

    async def database(self) -> Database:
        await self._enter_loop()
        async with self._lock:
            if self._database is None:
                self._database = await Database.connect(self.config.database)
            return self._database

    async def failed_store(self) -> FailedJobStore:
        await self._enter_loop()     # a store of an earlier loop is no longer usable
        if self._failed is None:
            store = FailedJobStore(await self.database())
            await store.migrate()
            self._failed = store
        return self._failed

    def opened(self, name: str | None = None) -> QueueConnection | None:
        """The connection if it is open already (no waiting, so a dispatch needs no timeout for it)."""
        self._check_loop()
        return self._connections.get(name or self.config.queue.default)

    async def connection(self, name: str | None = None) -> QueueConnection:
        await self._enter_loop()
        name = name or self.config.queue.default
        if name in self._connections:
            return self._connections[name]
        async with self._opening:   # two first callers at once must not open two connections
            if name not in self._connections:
                conn = await self._make(name)
                await conn.open()
                self._connections[name] = conn
        return self._connections[name]

    async def _make(self, name: str) -> QueueConnection:
        vt, window = self.config.queue.visibility_timeout, self.config.queue.replay_window
        if name == "database":
            from core.queue.database import DatabaseQueue

            return DatabaseQueue(await self.database(), await self.failed_store(), vt, replay_window=window)
        if name == "redis":
            from core.queue.redis import RedisQueue

            return RedisQueue(self.config.redis, await self.failed_store(), vt, replay_window=window)
        if name == "sync":
            from core.queue.sync import SyncQueue

            return SyncQueue(self.app)
        raise ConfigError(f"unknown queue connection {name!r}: use one of {', '.join(CONNECTIONS)}")

    def describe(self, name: str | None = None) -> str:
        """The store behind a connection name, for messages: "Redis at 127.0.0.1:6379"."""
        name = name or self.config.queue.default
        if name == "redis":
            from core.queue.redis import address

            return f"Redis at {address(self.config.redis)}"
        return self.config.database.describe() if name == "database" else name

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.close()
        if self._database is not None:
            db, self._database, self._failed = self._database, None, None
            await db.close()
