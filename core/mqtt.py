"""The MQTT app runner over aiomqtt: connect, subscribe every route, handle messages concurrently,
reconnect with backoff, stop cleanly on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import ssl
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from core.config import MqttConfig
from core.errors import ConnectionFailed, FrameworkError
from core.log import one_line
from core.router import MessageContext, PayloadError, Router, call_route

log = logging.getLogger("core.mqtt")   # not "mqtt": aiomqtt holds that logger at WARNING


@dataclass(frozen=True)
class RunnerOptions:
    first_delay: float = 0.5        # seconds before the first reconnect attempt
    max_delay: float = 10.0         # backoff cap, so a returning broker is noticed soon
    drain_timeout: float = 30.0     # how long a stop waits for in-flight handlers
    keepalive: int = 30


class Client:
    """What handlers get as `client`: publishes over whichever connection is current, so a handler
    started before a reconnect can still reply after it."""

    def __init__(self) -> None:
        self._mqtt: aiomqtt.Client | None = None

    @property
    def connected(self) -> bool:
        return self._mqtt is not None

    async def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False) -> None:
        if self._mqtt is None:
            raise ConnectionFailed(f"cannot publish to {topic}: not connected to the MQTT broker")
        await self._mqtt.publish(topic, encode_payload(payload), qos=qos, retain=retain)


def encode_payload(payload: Any) -> bytes | bytearray | str | None:
    """dicts, lists, numbers and booleans go as JSON; text and bytes as they are."""
    if payload is None or isinstance(payload, (str, bytes, bytearray)):
        return payload
    return json.dumps(payload)


def reason(exc: aiomqtt.MqttError) -> str:
    """The error with its cause: aiomqtt's "Disconnected during message iteration" hides the why."""
    text = str(exc) or type(exc).__name__
    return f"{text} ({exc.__cause__})" if exc.__cause__ else text


# CONNACK codes for bad credentials / not authorized (MQTT 3.1.1: 4, 5; MQTT 5: 134, 135).
REFUSED_CREDENTIALS = {4, 5, 134, 135}


def short_reason(exc: aiomqtt.MqttError) -> str:
    """'Connection refused', not '[Errno 111] Connection refused'."""
    return re.sub(r"^\[Errno -?\d+\]\s*", "", reason(exc))


def client_id(config: MqttConfig, app_name: str) -> str:
    return config.client_id or f"{app_name}-{uuid.uuid4().hex[:8]}"


class MqttApp:
    def __init__(self, router: Router, config: MqttConfig, *, app_name: str = "mqtt-app",
                 options: RunnerOptions | None = None) -> None:
        self.router = router
        self.config = config
        self.options = options or RunnerOptions()
        self.client = Client()
        self.identifier = client_id(config, app_name)
        self._stop = asyncio.Event()
        self._limit = asyncio.Semaphore(max(1, config.max_concurrent_messages))
        self._in_flight: set[asyncio.Task[None]] = set()
        self._session_connected = False
        self.connected = asyncio.Event()   # set while subscribed; lets tests and callers wait for readiness

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serve until stop() (or SIGTERM/SIGINT), then let in-flight handlers finish."""
        if not self.router.routes:
            raise FrameworkError("No routes to serve: define them in routes/mqtt.py")
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        log.info("MQTT app starting: broker %s%s, client id %s, %d routes", self.address,
                 " over TLS" if self.config.tls else "", self.identifier, len(self.router.routes))
        try:
            await self._connect_loop()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        log.info("MQTT app stopped")

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("Received %s: finishing in-flight messages, then stopping", sig.name)
        self.stop()

    # -- connection ------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        delay = self.options.first_delay
        started, ever_connected = asyncio.get_running_loop().time(), False
        while not self._stop.is_set():
            self._session_connected = False
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                if self._stop.is_set():
                    break
                ever_connected = ever_connected or self._session_connected
                if not ever_connected:
                    self._give_up_if_unreachable(exc, started, delay)
                if self._session_connected:
                    delay = self.options.first_delay    # a fresh outage starts the backoff over
                    log.warning("MQTT connection lost: %s; reconnecting in %gs", reason(exc), delay)
                else:  # once the outage is reported, its retries are detail
                    log.log(logging.DEBUG if ever_connected else logging.WARNING,
                            "Cannot connect to MQTT broker at %s: %s; retrying in %gs", self.address, reason(exc),
                            delay)
                await self._until_stopped(asyncio.sleep(delay))
                delay = min(delay * 2, self.options.max_delay)
        await self._drain()

    def _give_up_if_unreachable(self, exc: aiomqtt.MqttError, started: float, delay: float) -> None:
        """A broker never reached within MQTT_CONNECT_TIMEOUT, or one that refuses our credentials, is a
        configuration error: one clear line and a non-zero exit. Once connected, `run` never gives up."""
        code = getattr(getattr(exc, "rc", None), "value", getattr(exc, "rc", None))
        refused_credentials = code in REFUSED_CREDENTIALS
        waited = asyncio.get_running_loop().time() - started + delay
        timeout = self.config.connect_timeout
        if refused_credentials or (timeout and waited > timeout):
            raise ConnectionFailed(f"Cannot connect to MQTT broker at {self.address}: {short_reason(exc)}")

    async def _session(self) -> None:
        """One connection: subscribe, serve until stop or until the broker goes away (MqttError)."""
        mqtt = self._new_client()
        if not await self._until_stopped(mqtt.__aenter__()):
            return
        self._session_connected = True
        try:
            subscriptions = self.router.subscriptions(self.config.shared_group)
            for topic, qos in subscriptions:
                granted = await mqtt.subscribe(topic, qos=qos)
                # A refusal (e.g. an ACL) comes back as code 128 in SUBACK, not as an error.
                if any(getattr(code, "value", code) >= 128 for code in granted):
                    log.error("The broker refused the subscription to %s (not allowed for this user?)", topic)
            self.client._mqtt = mqtt
            self.connected.set()
            log.info("Connected to MQTT broker at %s; subscribed to %d topics", self.address, len(subscriptions))
            await self._serve(mqtt)
        finally:
            self.connected.clear()
            if self._stop.is_set():
                await self._drain()     # handlers finishing now can still publish their replies
            self.client._mqtt = None
            await self._close(mqtt)

    def _new_client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.config.host, self.config.port, identifier=self.identifier,
            username=self.config.username or None, password=self.config.password or None,
            tls_context=ssl.create_default_context() if self.config.tls else None,
            keepalive=self.options.keepalive)

    @staticmethod
    async def _close(mqtt: aiomqtt.Client) -> None:
        try:
            await mqtt.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            pass  # already gone; nothing left to close

    async def _until_stopped(self, awaitable: Awaitable[Any]) -> bool:
        """Await unless a stop comes first (then cancel it); True when it completed."""
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        return False

    # -- messages --------------------------------------------------------------------------

    async def _serve(self, mqtt: aiomqtt.Client) -> None:
        reader = asyncio.ensure_future(self._read(mqtt))
        if not await self._until_stopped(reader):
            return
        reader.result()

    async def _read(self, mqtt: aiomqtt.Client) -> None:
        async for message in mqtt.messages:
            # Waiting here, not inside the task, is what bounds the work: reading pauses at the limit.
            await self._limit.acquire()
            task = asyncio.create_task(self._handle(message))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._limit.release()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        log.info("Waiting for %d in-flight messages", len(self._in_flight))
        _, late = await asyncio.wait(set(self._in_flight), timeout=self.options.drain_timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("Cancelled %d handlers still running after %gs", len(late), self.options.drain_timeout)

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        try:
            context = self.router.context_for(topic, message.payload, client=self.client, qos=message.qos,
                                              retain=message.retain)
        except Exception as exc:  # a payload we cannot even decode must not reach the reader
            log.error("Cannot read message on topic %s: %s", one_line(topic), one_line(str(exc)))
            return
        if context is None:
            log.debug("No route for topic %s", one_line(topic))
            return
        await self._call(context)

    async def _call(self, context: MessageContext) -> None:
        # The topic comes from whoever published: escaped, so it cannot forge or split a log line.
        where = f"topic {one_line(context.topic)} (route {context.route.pattern} -> {context.route.handler_name})"
        try:
            await call_route(context)
        except PayloadError as exc:
            log.error("Payload rejected on %s: %s", where, exc)
        except ConnectionFailed as exc:
            # A store or the broker is away (QueueConnectionError from a dispatch): the message says
            # which; a traceback would only repeat itself for every message of the outage.
            log.error("Handler failed on %s: %s: %s", where, type(exc).__name__, exc)
        except asyncio.CancelledError:
            log.warning("Handler cancelled on %s", where)
            raise
        except Exception as exc:
            # Whatever a handler does, the app keeps serving; the traceback is for whoever fixes it.
            log.error("Handler failed on %s: %s: %s", where, type(exc).__name__, exc, exc_info=exc)

