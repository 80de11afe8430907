"""The running application: config, the queue manager and the router, booted lazily or explicitly."""
from __future__ import annotations

import logging
from typing import Any

from core.config import Config, load_config
from core.log import configure_logging
from core.queue.manager import QueueManager

_current: "Application | None" = None


class Application:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config()
        configure_logging(self.config)
        self.queue = QueueManager(self)
        self.router: Any = None

    async def __aenter__(self) -> "Application":
        set_current(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        if current_or_none() is self:
            set_current(None)

    async def close(self) -> None:
        await self.queue.close()


def set_current(app: Application | None) -> None:
    global _current
    _current = app


def current_or_none() -> Application | None:
    return _current


def current() -> Application:
    """The application, booted from config on first use."""
    global _current
    if _current is None:
        _current = Application()
        logging.getLogger("app").debug("application booted lazily from config")
    return _current
