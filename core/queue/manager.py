"""QueueManager: turns a connection name from config into an open QueueConnection, lazily.

The names are config/queue.py's `connections` (Laravel's); each names a driver, and a driver is a
factory in a registry (Laravel's QueueManager::addConnector). The built-in drivers register below,
their modules imported on first use; another store is one module and one register_driver call.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.config import Config
from core.database import Database
from core.errors import ConfigError
from core.queue.contract import QueueConnection
from core.queue.failed import FailedJobStore

if TYPE_CHECKING:
    from core.app import Application

# (manager, connection name, its settings from config) -> a new QueueConnection, not opened yet.
Factory = Callable[["QueueManager", str, Mapping[str, Any]], Awaitable[QueueConnection]]
# (config, the connection's settings) -> the store it reaches, for messages: "Redis at 127.0.0.1:6379".
Describe = Callable[[Config, Mapping[str, Any]], str]


@dataclass(frozen=True)
class Driver:
    make: Factory
    describe: Describe | None = None


_DRIVERS: dict[str, Driver] = {}


def register_driver(driver: str, factory: Factory, describe: Describe | None = None) -> None:
    """Make `driver` usable in config/queue.py's connections. The manager calls
    `await factory(manager, name, settings)` on a name's first use, then sets the connection's
    name and opens it; `describe` names the store for messages written before it is open (a
    dispatch that cannot reach it). Registering a driver again replaces it."""
    _DRIVERS[driver] = Driver(factory, describe)


def registered_drivers() -> list[str]:
    return sorted(_DRIVERS)


class QueueManager:
    def __init__(self, app: "Application") -> None:
        self.app = app
        self.config: Config = app.config
        self._connections: dict[str, QueueConnection] = {}
        self._database: Database | None = None
        self._failed: FailedJobStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()         # both replaced by _check_loop for each event loop
        self._opening = asyncio.Lock()
        self._failing = asyncio.Lock()      # the failed store's first callers at once migrate it once
        self._closer: AsyncGenerator[None, None] | None = None

    def _check_loop(self) -> None:
        # Connections belong to the event loop that opened them; a new loop (a second
        # asyncio.run in a script or test) gets fresh ones.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._opening, self._failing = loop, asyncio.Lock(), asyncio.Lock(), asyncio.Lock()
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
        async with self._failing:
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

    def settings(self, name: str) -> Mapping[str, Any]:
        """A configured connection's settings; one clear line naming the configured ones if unknown."""
        connections = self.config.queue.connections
        settings = connections.get(name) if isinstance(name, str) else None
        if settings is None:
            raise ConfigError(f"unknown queue connection {name!r}: the configured connections are "
                              f"{', '.join(connections)} (config/queue.py)")
        return settings

    async def _make(self, name: str) -> QueueConnection:
        settings = self.settings(name)
        driver = _DRIVERS.get(settings["driver"])
        if driver is None:
            raise ConfigError(f"queue connection {name!r} uses driver {settings['driver']!r}, which is not "
                              f"registered: the drivers are {', '.join(registered_drivers())}")
        conn = await driver.make(self, name, settings)
        conn.name = name
        return conn

    def describe(self, name: str | None = None) -> str:
        """The store behind a connection name, for messages: "Redis at 127.0.0.1:6379"."""
        name = name or self.config.queue.default
        settings = self.config.queue.connections.get(name) if isinstance(name, str) else None
        driver = _DRIVERS.get(settings["driver"]) if settings else None
        if driver is None or driver.describe is None or settings is None:
            return str(name)
        return driver.describe(self.config, settings)

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            await conn.close()
        if self._database is not None:
            db, self._database, self._failed = self._database, None, None
            await db.close()


# -- the built-in drivers: each module is imported when a connection of its driver is first made --

def _no_settings(name: str, settings: Mapping[str, Any]) -> None:
    """The built-in drivers read everything from .env: a setting given here would be ignored."""
    extra = sorted(key for key in settings if key != "driver")
    if extra:
        raise ConfigError(f"queue connection {name!r}: the {settings['driver']} driver takes no setting "
                          f"{extra[0]!r} (it reads its store's settings from .env)")


async def _database(manager: QueueManager, name: str, settings: Mapping[str, Any]) -> QueueConnection:
    from core.queue.database import DatabaseQueue

    _no_settings(name, settings)
    queue = manager.config.queue
    return DatabaseQueue(await manager.database(), await manager.failed_store(), queue.visibility_timeout,
                         replay_window=queue.replay_window)


async def _redis(manager: QueueManager, name: str, settings: Mapping[str, Any]) -> QueueConnection:
    from core.queue.redis import RedisQueue

    _no_settings(name, settings)
    queue = manager.config.queue
    return RedisQueue(manager.config.redis, manager.failed_store, queue.visibility_timeout,
                      replay_window=queue.replay_window)


async def _sync(manager: QueueManager, name: str, settings: Mapping[str, Any]) -> QueueConnection:
    from core.queue.sync import SyncQueue

    _no_settings(name, settings)
    return SyncQueue(manager.app)


def _describe_redis(config: Config, settings: Mapping[str, Any]) -> str:
    from core.queue.redis import address

    return f"Redis at {address(config.redis)}"


register_driver("database", _database, lambda config, settings: config.database.describe())
register_driver("redis", _redis, _describe_redis)
register_driver("sync", _sync)
