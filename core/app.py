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
        self._mqtt: Any = None

    @property
    def mqtt(self) -> Any:
        """The process's MQTT publisher (core/mqtt_publisher.py): jobs' `self.publish()`; connects on first use."""
        if self._mqtt is None:
            from core.mqtt_publisher import MqttPublisher

            self._mqtt = MqttPublisher(self.config.mqtt, self.config.app.name)
        return self._mqtt

    async def __aenter__(self) -> "Application":
        set_current(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        if current_or_none() is self:
            set_current(None)

    async def close(self) -> None:
        try:
            await self.queue.close()
        finally:
            if self._mqtt is not None:
                await self._mqtt.close()
