"""The running application: config, the queue manager and the router, booted lazily or explicitly."""
from __future__ import annotations

from typing import Any

from core.config import Config, load_config
from core.context import current, current_or_none, set_current
from core.log import configure_logging
from core.queue.manager import QueueManager

__all__ = ["Application", "current", "current_or_none", "set_current"]   # the context's, for older imports


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
