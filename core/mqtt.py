"""The MQTT app runner over aiomqtt: connect, subscribe every route, handle messages concurrently,
acknowledge each QoS 1/2 message after its handlers returned (SPEC 18), reconnect with backoff, stop
cleanly on SIGTERM/SIGINT."""
from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from core.config import MqttConfig
from core.errors import ConfigError, ConnectionFailed, FrameworkError
from core.log import one_line
from core.mqtt_connection import (REFUSED_CREDENTIALS, Connection, Received, encode_payload, reason, short_reason,
                                  subscribe_properties, tls_context)
from core.router import MessageContext, PayloadError, Route, Router, call_route

log = logging.getLogger("core.mqtt")   # not "mqtt": aiomqtt holds that logger at WARNING


@dataclass(frozen=True)
class RunnerOptions:
    first_delay: float = 0.5        # seconds before the first reconnect attempt
    max_delay: float = 10.0         # backoff cap, so a returning broker is noticed soon
    drain_timeout: float = 30.0     # how long a stop waits for in-flight handlers
    keepalive: int = 30


class Client:
    """What handlers get as `client`: publishes over whichever connection is current, so a handler
    started before a reconnect can still reply after it. Between connections a publish waits for
    the next one, up to CONNECT_WAIT: a persistent session hands over the messages it held the
    moment the broker accepts the app, before the app has finished subscribing, and their replies
    must not fail for that."""

    CONNECT_WAIT = 10.0     # seconds; aiomqtt's own publish timeout

    def __init__(self) -> None:
        self._connection: Connection | None = None
        self._ready = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def use(self, connection: Connection | None) -> None:
        """The connection publishes go over from now on (None: between connections)."""
        self._connection = connection
        if connection is None:
            self._ready.clear()
        else:
            self._ready.set()

    async def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False) -> None:
        connection = self._connection
        if connection is None:
            try:
                async with asyncio.timeout(self.CONNECT_WAIT):
                    await self._ready.wait()
            except TimeoutError:
                raise ConnectionFailed(f"cannot publish to {topic}: not connected to the MQTT broker "
                                       f"(waited {self.CONNECT_WAIT:g}s)") from None
            connection = self._connection
            if connection is None:
                raise ConnectionFailed(f"cannot publish to {topic}: not connected to the MQTT broker")
        await connection.publish(topic, encode_payload(payload), qos=qos, retain=retain)


def client_id(config: MqttConfig, app_name: str) -> str:
    return config.client_id or f"{app_name}-{uuid.uuid4().hex[:8]}"


def _quiet_socket_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiomqtt registers a socket's writer from paho's thread; when the socket closed meanwhile (a broker
    refusing the TLS handshake) the event loop would print EBADF's traceback: a debug line is enough."""
    if isinstance(context.get("exception"), OSError):
        log.debug("Ignored in the event loop: %s", one_line(str(context["exception"])))
        return
    loop.default_exception_handler(context)


class MqttApp:
    """Messages flow: the connection's reader -> a bounded inbox -> MQTT_MAX_CONCURRENT consumers, each
    running a message's handlers and then acknowledging it. A full inbox pauses the reader, so memory
    holds at most twice MQTT_MAX_CONCURRENT messages; the broker keeps the rest."""

    def __init__(self, router: Router, config: MqttConfig, *, app_name: str = "mqtt-app",
                 options: RunnerOptions | None = None) -> None:
        if not config.clean_session and not config.client_id:
            raise ConfigError("MQTT_CLEAN_SESSION=false needs a fixed MQTT_CLIENT_ID: the broker keeps the "
                              "session under that id")
        tls_context(config)     # a missing certificate file is a configuration error now, not at each retry
        self.router = router
        self.config = config
        self.options = options or RunnerOptions()
        self.client = Client()
        self.identifier = client_id(config, app_name)
        self.capacity = max(1, config.max_concurrent_messages)
        # MQTT 5 says through which subscription each copy came; MQTT 3.1.1 does not, so there each
        # message is asked for once (narrower filters folded into wider ones) and reaches every route.
        self.plan = router.subscription_plan(config.shared_group, covering=config.protocol != "5")
        self._routes_of = {s.identifier: s.routes for s in self.plan}
        self._stop = asyncio.Event()
        self._inbox: asyncio.Queue[Received] = asyncio.Queue()
        self._consumers: list[asyncio.Task[None]] = []
        self._connection: Connection | None = None
        self._held = 0
        self._session_connected = False
        self.connected = asyncio.Event()   # set while subscribed; lets tests and callers wait for readiness

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    @property
    def buffered(self) -> int:
        """Messages received and not yet finished: waiting in the inbox or with a running handler."""
        return self._held

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
        session = "persistent session" if not self.config.clean_session else "clean session"
        log.info("MQTT app starting: broker %s%s, MQTT %s, client id %s, %s, %d routes", self.address,
                 " over TLS" if self.config.tls else "", self.config.protocol, self.identifier, session,
                 len(self.router.routes))
        self._consumers = [asyncio.create_task(self._consume()) for _ in range(self.capacity)]
        previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(_quiet_socket_errors)
        try:
            await self._connect_loop()
        finally:
            loop.set_exception_handler(previous_handler)
            for task in self._consumers:
                task.cancel()
            await asyncio.gather(*self._consumers, return_exceptions=True)
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
        connection = Connection(self.config, self.identifier, self.options.keepalive, self._deliver,
                                receive_maximum=2 * self.capacity)
        self._connection = connection      # before CONNACK: a persistent session's messages follow it at once
        if not await self._until_stopped(connection.connect()):
            return
        self._session_connected = True
        self.client.use(connection)
        try:
            for sub in self.plan:
                granted = await connection.client.subscribe(
                    sub.topic_filter, qos=sub.qos, properties=subscribe_properties(self.config, sub.identifier))
                # A refusal (e.g. an ACL) comes back as code 128 in SUBACK, not as an error.
                if any(getattr(code, "value", code) >= 128 for code in granted):
                    log.error("The broker refused the subscription to %s (not allowed for this user?)",
                              sub.topic_filter)
            self.connected.set()
            log.info("Connected to MQTT broker at %s; subscribed to %d topics", self.address, len(self.plan))
            await self._until_stopped(connection.wait_closed())
        finally:
            self.connected.clear()
            if self._stop.is_set():
                connection.stop_taking()    # nothing new; what was received is still handled and acked
                await self._drain()     # handlers finishing now can still publish their replies
            self.client.use(None)
            await connection.close()

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

    def _deliver(self, message: Received) -> bool:
        """Called by the connection's reader for each message; True asks it to pause (the inbox is full)."""
        self._inbox.put_nowait(message)
        self._held += 1
        return self._inbox.qsize() >= self.capacity

    async def _consume(self) -> None:
        while True:
            message = await self._inbox.get()
            try:
                connection = self._connection
                # `full`, not `paused`: a reply waiting for its PUBACK keeps a full app's reader going,
                # and the pause it leaves behind must still be lifted here
                if connection is not None and connection.full and self._inbox.qsize() <= self.capacity // 2 \
                        and not self._stop.is_set():     # stopping: stop_taking() runs the reader
                    connection.resume()
                await self._process(message)
            finally:
                self._held -= 1
                self._inbox.task_done()

    async def _process(self, message: Received) -> None:
        """Run every route the message reaches, each once, then acknowledge it (QoS 1/2). A handler that
        raises is logged and the message still acked: delivering it again would fail again."""
        stale = message.connection is not self._connection
        if stale and message.qos and not self.config.clean_session:
            return   # its connection is gone unacked: the broker delivers it again on this session
        try:
            contexts = self.router.contexts_for(message.topic, message.payload, self._candidates(message),
                                                client=self.client, qos=message.qos, retain=message.retain,
                                                properties=message.properties)
        except Exception as exc:  # a payload we cannot even decode must not stop the consumer
            log.error("Cannot read message on topic %s: %s", one_line(message.topic), one_line(str(exc)))
            contexts = []
        if not contexts:
            log.debug("No route for topic %s", one_line(message.topic))
        for context in contexts:
            await self._call(context)
        message.connection.ack(message)

    def _candidates(self, message: Received) -> Iterable[Route] | None:
        """The routes of the subscriptions a copy came through (MQTT 5), else None: every route."""
        if not message.subscription_ids:
            return None
        return [route for sid in message.subscription_ids for route in self._routes_of.get(sid, ())]

    async def _drain(self) -> None:
        if not self._held:
            return
        log.info("Waiting for %d in-flight messages", self._held)
        try:
            await asyncio.wait_for(self._inbox.join(), self.options.drain_timeout)
        except TimeoutError:
            late = self._held
            for task in self._consumers:
                task.cancel()
            log.warning("Cancelled %d handlers still running after %gs", late, self.options.drain_timeout)

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
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():     # the app is stopping: not acked, delivered again
                log.warning("Handler cancelled on %s", where)
                raise
            log.error("Handler failed on %s: CancelledError: %s", where, exc)
        except BaseException as exc:
            # Whatever a handler does, sys.exit() included, the app keeps serving; the traceback is for
            # whoever fixes it. (Ctrl-C and SIGTERM reach the app through its signal handlers, not here.)
            log.error("Handler failed on %s: %s: %s", where, type(exc).__name__, exc, exc_info=exc)
