"""Publishing from jobs (SPEC 18): `await self.publish(topic, payload, qos=1)` inside handle() goes
through one connection per process, opened on first use and closed with the application (a worker's
at its exit). Its client id is its own, never MQTT_CLIENT_ID: the broker would disconnect the app."""
from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiomqtt

from core.config import MqttConfig
from core.errors import ConnectionFailed
from core.mqtt_connection import client_options, encode_payload, fail_fast, short_reason


class MqttPublisher:
    def __init__(self, config: MqttConfig, app_name: str = "mqtt-app") -> None:
        self.config = config
        self.identifier = f"{app_name}-publisher-{uuid.uuid4().hex[:8]}"
        self._client: aiomqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def publish(self, topic: str, payload: Any = None, qos: int = 1, retain: bool = False) -> None:
        """Send one message; with qos 1 or 2, return once the broker has it. A connection found broken is
        replaced once; a broker that cannot be reached is ConnectionFailed (the job's try fails, and
        its retry publishes again: at least once)."""
        data = encode_payload(payload)
        for attempt in (1, 2):
            client = await self._connected()
            try:
                await client.publish(topic, data, qos=qos, retain=retain)
                return
            except aiomqtt.MqttError as exc:
                await self._forget()
                if attempt == 2:
                    raise ConnectionFailed(f"Cannot publish to {topic}: MQTT broker at {self.address}: "
                                           f"{short_reason(exc)}") from None

    async def _connected(self) -> aiomqtt.Client:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:      # a connection lives on the event loop that opened it
            self._client, self._loop, self._opening = None, loop, asyncio.Lock()
        assert self._opening is not None
        async with self._opening:
            if self._client is None:
                client = aiomqtt.Client(self.config.host, self.config.port,
                                        **client_options(self.config, self.identifier, 30, clean=True))
                fail_fast(client)       # a refusal before CONNACK (a TLS alert) in its own words, not "timed out"
                try:
                    await asyncio.wait_for(client.__aenter__(), self.config.connect_timeout or 10)
                except (aiomqtt.MqttError, TimeoutError) as exc:
                    why = short_reason(exc) if isinstance(exc, aiomqtt.MqttError) else "timed out"
                    raise ConnectionFailed(f"Cannot connect to MQTT broker at {self.address}: {why}") from None
                self._client = client
            return self._client

    async def _forget(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close(client)

    async def close(self) -> None:
        """Disconnect, when a connection was opened on this event loop (another loop's is only dropped)."""
        client, same_loop = self._client, self._loop is asyncio.get_running_loop()
        self._client = None
        if client is not None and same_loop:
            await _close(client)


async def _close(client: aiomqtt.Client) -> None:
    try:
        await client.__aexit__(None, None, None)
    except aiomqtt.MqttError:
        pass   # already gone
