"""One connection to the broker as the MQTT app uses it (SPEC 18): built from MqttConfig (TLS files,
MQTT 5, persistent sessions); QoS 1/2 messages acknowledged only when the app says so, after their
handlers; reading from the socket paused while the app's buffer is full, so the broker holds the rest.

aiomqtt 2.x neither passes paho's `manual_ack` through nor lets a reader pause, so this module reaches
the paho client underneath (`aiomqtt.Client._client`) in the few places marked "paho:".
"""
from __future__ import annotations

import asyncio
import json
import re
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.client import MQTT_ERR_AGAIN, MQTT_LOG_ERR, PUBACK, time_func
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.config import MqttConfig, project_path
from core.errors import ConfigError

SESSION_NEVER_EXPIRES = 0xFFFFFFFF      # MQTT 5: what an MQTT 3.1.1 persistent session does
_QOS_BITS, _QOS1, _QOS2 = 0x06, 0x02, 0x04
_PUBACK = struct.Struct("!BBH")         # a PUBACK: type, remaining length 2, the message id
READ_BATCH = 256                        # packets read per wake-up at most, so one connection cannot starve the loop
RECV_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Received:
    """One message as the broker delivered it on one connection (`mid` is that connection's to ack)."""
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    subscription_ids: tuple[int, ...]
    properties: Any
    connection: "Connection"


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


def protocol_of(config: MqttConfig) -> aiomqtt.ProtocolVersion:
    return aiomqtt.ProtocolVersion.V5 if config.protocol == "5" else aiomqtt.ProtocolVersion.V311


def tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    """The TLS context MQTT_TLS and the MQTT_*_FILE settings ask for; a missing or unreadable file is one line."""
    if not config.tls:
        return None
    files = {"MQTT_CA_FILE": config.ca_file, "MQTT_CERT_FILE": config.cert_file, "MQTT_KEY_FILE": config.key_file}
    for name, value in files.items():
        if value and not project_path(value).is_file():
            raise ConfigError(f"{name}: no such file: {value}")
    if config.key_file and not config.cert_file:
        raise ConfigError("MQTT_KEY_FILE is set without MQTT_CERT_FILE (the client certificate it belongs to)")
    try:
        context = ssl.create_default_context(cafile=_path(config.ca_file))
        if config.cert_file:
            context.load_cert_chain(str(project_path(config.cert_file)), _path(config.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"Cannot use the TLS files (MQTT_CA_FILE, MQTT_CERT_FILE, MQTT_KEY_FILE): {exc}") from None
    return context


def _varint(buf: bytes, at: int, end: int) -> tuple[int, int] | None:
    """An MQTT variable byte integer at buf[at:end]: (value, where it ends), or None if cut or too long."""
    value, mult = 0, 1
    for i in range(at, min(at + 4, end)):
        byte = buf[i]
        value += (byte & 127) * mult
        if not byte & 128:
            return value, i + 1
        mult *= 128
    return None


def _subscription_ids(buf: bytes, at: int, end: int) -> tuple[int, tuple[int, ...]] | None:
    """An MQTT 5 PUBLISH's properties at buf[at:end] when they are subscription identifiers only (0x0B,
    each a variable byte integer): (where the payload starts, the identifiers); else None."""
    length = _varint(buf, at, end)
    if length is None or length[1] + length[0] > end:
        return None
    i, stop = length[1], length[1] + length[0]
    ids = []
    while i < stop:
        if buf[i] != 0x0B:
            return None
        found = _varint(buf, i + 1, stop)
        if found is None or found[0] == 0:
            return None
        ids.append(found[0])
        i = found[1]
    return stop, tuple(ids)


def _path(value: str) -> str | None:
    return str(project_path(value)) if value else None


def client_options(config: MqttConfig, identifier: str, keepalive: int, *, clean: bool,
                   receive_maximum: int | None = None) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments for `config`: MQTT 3.1.1's clean_session, or MQTT 5's clean start
    and a session that outlives the connection when it is not clean."""
    options: dict[str, Any] = {
        "identifier": identifier, "username": config.username or None, "password": config.password or None,
        "tls_context": tls_context(config), "keepalive": keepalive, "protocol": protocol_of(config)}
    if config.protocol != "5":
        return {**options, "clean_session": clean}
    properties = Properties(PacketTypes.CONNECT)
    if not clean:
        properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
    if receive_maximum:
        properties.ReceiveMaximum = min(receive_maximum, 65535)
    return {**options, "clean_start": clean, "properties": properties}


def subscribe_properties(config: MqttConfig, identifier: int) -> Properties | None:
    if config.protocol != "5":
        return None
    properties = Properties(PacketTypes.SUBSCRIBE)
    properties.SubscriptionIdentifier = identifier
    return properties


def fail_fast(client: aiomqtt.Client) -> None:
    """aiomqtt ignores a connection closed before CONNACK (a TLS alert for a missing client certificate
    comes then) and waits out its timeout for nothing: fail the connect at once, with paho's reason.
    For the app's connection and the jobs' publisher alike."""
    paho: Any = client._client          # paho: its log and disconnect callbacks
    loop = asyncio.get_running_loop()
    last_error = [""]
    aiomqtt_disconnect = paho.on_disconnect

    def on_log(_client: Any, _userdata: Any, level: int, text: str) -> None:
        if level == MQTT_LOG_ERR:
            last_error[0] = text

    def fail(why: str) -> None:
        connected = client._connected
        if not connected.done():
            connected.set_exception(aiomqtt.MqttError(why))

    def on_disconnect(c: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        why = last_error[0] or f"the broker closed the connection before accepting it ({reason_code})"
        # paho may call this from the thread aiomqtt connects in: the future is the event loop's
        loop.call_soon_threadsafe(fail, why.removeprefix("failed to receive on socket: "))
        aiomqtt_disconnect(c, userdata, flags, reason_code, properties)

    paho.on_log, paho.on_disconnect = on_log, on_disconnect


class Connection:
    """An aiomqtt client whose incoming messages go to `deliver` (not aiomqtt's unbounded queue) and are
    acknowledged by `ack()`. `deliver` returns True when the app's buffer is full: reading pauses until
    `resume()`; TCP's window then stops the broker, which keeps what it has (QoS 1/2 in the session).
    Except while a handler's QoS 1/2 publish waits for its acknowledgement (`publish()`): that comes
    on this socket behind whatever the broker sent before it, so reading goes on until it is in."""

    def __init__(self, config: MqttConfig, identifier: str, keepalive: int, deliver: Callable[[Received], bool],
                 *, receive_maximum: int | None = None) -> None:
        self.client = aiomqtt.Client(config.host, config.port, **client_options(
            config, identifier, keepalive, clean=config.clean_session, receive_maximum=receive_maximum))
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self.paused = False
        self.full = False       # the app asked for a pause (its inbox is full) and has not resumed yet
        self._replies = 0       # publishes waiting for the broker's acknowledgement
        self.taking = True      # False once the app stops: stop_taking()
        self.closed = False
        paho: Any = self.client._client          # paho: the hooks below
        self._paho = paho
        paho.manual_ack_set(True)
        paho.on_message = self._on_message
        self._paho_publish, self._paho_pubrel = paho._handle_publish, paho._handle_pubrel
        paho._handle_publish, paho._handle_pubrel = self._handle_publish, self._handle_pubrel
        self._qos2 = False
        fail_fast(self.client)
        # paho reads a packet in three recv() calls (type, length, body): read the socket in blocks instead
        self._paho_recv, paho._sock_recv = paho._sock_recv, self._sock_recv
        self._buffer, self._offset = b"", 0
        self._v5 = config.protocol == "5"       # _take_publish: MQTT 5 packets carry properties
        self._pubacks: list[int] = []           # ack(): the mids to acknowledge in this turn of the loop

    # -- acknowledgements ---------------------------------------------------------------------

    def ack(self, message: Received) -> None:
        """Acknowledge a QoS 1/2 message on the connection it came on; once that connection is gone the
        broker delivers the message again (persistent session) or has forgotten it (clean one).
        Acks go out in the order handlers finish, not the order messages came: Mosquitto, EMQX and
        HiveMQ accept that, and in-order acks would let one slow handler stall every later message."""
        if message.qos == 0 or self.closed:
            return
        if message.qos == 1:
            self._pubacks.append(message.mid)
            if len(self._pubacks) == 1:
                self._loop.call_soon(self._send_pubacks)
        else:
            self._paho._send_pubrec(message.mid)            # paho: QoS 2's first answer, held back until now

    def _send_pubacks(self) -> None:
        """The PUBACKs of the handlers that finished in one turn of the loop, as one write: paho sends
        each packet with a send() of its own, and with mosquitto's window of 20 unacknowledged messages
        (MQTT 3.1.1) those came back to back after every window. The bytes are paho's PUBACK (MQTT 5's
        too: a success needs no reason code); paho writes them as one packet."""
        mids, self._pubacks = self._pubacks, []
        if self.closed or not mids:
            return
        packet = b"".join([_PUBACK.pack(PUBACK, 2, mid) for mid in mids])
        self._paho._packet_queue(PUBACK, packet, 0, 1)     # paho: its write queue, as _send_puback uses

    def _handle_publish(self) -> Any:
        """paho answers a QoS 2 PUBLISH with PUBREC at once, and then owns the message: a crash before
        the handler returns would lose it. Read as QoS 1 here (the packets have the same layout), it
        reaches on_message unanswered; ack() sends the PUBREC, and _handle_pubrel the PUBCOMP."""
        packet = self._paho._in_packet
        if packet["command"] & _QOS_BITS != _QOS2:
            return self._paho_publish()
        packet["command"] = packet["command"] & ~_QOS_BITS | _QOS1
        self._qos2 = True
        try:
            return self._paho_publish()
        finally:
            self._qos2 = False

    def _handle_pubrel(self) -> Any:
        # With manual acks paho would leave PUBREL unanswered; the handler already ran: complete it.
        self._paho._manual_ack = False
        try:
            return self._paho_pubrel()
        finally:
            self._paho._manual_ack = True

    # -- reading ----------------------------------------------------------------------------------

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:                          # brokers refuse these; paho can still hand one over
            topic = bytes(message._topic).decode("utf-8", "replace")
        properties = message.properties if hasattr(message, "properties") else None
        ids = getattr(properties, "SubscriptionIdentifier", None) or ()
        self._take(Received(topic, message.payload, 2 if self._qos2 else message.qos, bool(message.retain),
                            message.mid, tuple(ids), properties, self))

    def _take_publish(self) -> bool:
        """The next packet, when it is a whole QoS 0 or 1 PUBLISH already in the buffer, handed over
        without paho: its path (a packet dict, MQTTMessage, a debug line formatted per message, its
        callback lock) was about 40% of what the app spent on a message. Over MQTT 5 only when the
        PUBLISH carries no property but subscription identifiers (what the broker adds for the app's
        own subscriptions). False, with nothing read, for anything else: another packet, QoS 2,
        other properties (a ResponseTopic...), part of a packet, a topic that is not UTF-8; paho
        reads that one as before."""
        buf, at = self._buffer, self._offset
        end = len(buf)
        if end - at < 4:
            return False
        command = buf[at]
        if command & 0xF0 != 0x30 or command & _QOS_BITS not in (0, _QOS1):
            return False
        remaining = _varint(buf, at + 1, end)       # the remaining length
        if remaining is None:
            return False
        length, i = remaining
        stop = i + length
        if stop > end or length < 2:
            return False
        size = buf[i] << 8 | buf[i + 1]
        start = i + 2 + size
        mid = 0
        if command & _QOS_BITS:
            if start + 2 > stop:
                return False
            mid = buf[start] << 8 | buf[start + 1]
            start += 2
        if size == 0 or start > stop or (command & _QOS_BITS and mid == 0):
            return False                # malformed: paho says so
        ids: tuple[int, ...] = ()
        properties = None
        if self._v5:
            found = _subscription_ids(buf, start, stop)
            if found is None:
                return False
            start, ids = found
            # What paho hands over (handlers see it as context.properties), built the cheap way.
            properties = Properties(PacketTypes.PUBLISH)
            if ids:
                properties.SubscriptionIdentifier = list(ids)
        try:
            topic = buf[i + 2:i + 2 + size].decode("utf-8")
        except UnicodeDecodeError:
            return False
        self._offset = stop
        self._take(Received(topic, buf[start:stop], 1 if command & _QOS_BITS else 0, bool(command & 1), mid, ids,
                            properties, self))
        return True

    def _take(self, received: Received) -> None:
        if not self.taking:
            return          # stopping: neither handed over nor acknowledged (a persistent session gets it again)
        if self._deliver(received):
            self.full = True
            if not self._replies:
                self.pause()

    async def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
        """A handler's publish on this connection. One of QoS 1/2 is done when the broker's PUBACK or
        PUBCOMP comes in, behind the messages the broker sent before it: with reading paused (a full
        inbox) it waited for nothing until the publish timed out (10 s). So reading goes on while
        any such publish waits; the broker's in-flight window (MQTT 5's receive maximum, Mosquitto's
        max_inflight_messages) bounds the QoS 1/2 messages that come in meanwhile."""
        if qos == 0:
            await self.client.publish(topic, payload, qos=qos, retain=retain)
            return
        self._replies += 1
        self._unpause()
        try:
            await self.client.publish(topic, payload, qos=qos, retain=retain)
        finally:
            self._replies -= 1
            if not self._replies and self.full and self.taking:
                self.pause()

    def stop_taking(self) -> None:
        """The app is stopping: messages that arrive from now on are neither handed to it nor acknowledged,
        and the reader goes on, so the handlers still running get the acknowledgements of what they
        publish. (Pausing the reader instead left a handler's QoS 1 reply waiting for its PUBACK until
        the publish timed out, 10 s, and failed.)"""
        self.taking = False
        self.resume()

    def pause(self) -> None:
        sock = self._paho.socket()
        if not self.paused and sock is not None:
            self._loop.remove_reader(sock.fileno())
            self.paused = True

    def resume(self) -> None:
        """The app has room again."""
        self.full = False
        self._unpause()

    def _unpause(self) -> None:
        if not self.paused:
            return
        self.paused = False
        sock = self._paho.socket()
        if sock is not None and not self.closed:
            self._loop.add_reader(sock.fileno(), self._read)
            self._loop.call_soon(self._read)    # bytes already read into the buffer: the selector cannot see them

    def _read(self) -> None:
        """Replaces aiomqtt's reader (Client._on_socket_open), which takes one packet per wake-up: up to
        READ_BATCH packets, until the socket has no more or the app's inbox is full."""
        paho = self._paho
        taken = 0
        try:
            for _ in range(READ_BATCH):
                if self.paused or paho._sock is None:
                    return
                if paho._in_packet["command"] == 0 and self._take_publish():
                    taken += 1
                    continue
                rc = paho._packet_read()
                if rc == MQTT_ERR_AGAIN:
                    return
                if rc > 0:
                    paho._loop_rc_handle(rc)
                    return
            self._loop.call_soon(self._read)    # more may wait in the buffer
        except Exception as exc:   # a broken pipe: the connection is gone, as aiomqtt's reader decides
            disconnected = self.client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
        finally:
            if taken:                   # paho's keepalive counts from the last packet in, as its reader does
                with paho._msgtime_mutex:
                    paho._last_msg_in = paho._last_bytes_received = time_func()

    def _sock_recv(self, size: int) -> bytes:
        if self._offset >= len(self._buffer):
            data = self._paho_recv(RECV_SIZE)       # BlockingIOError when there is nothing: paho's "again"
            if len(data) <= size:
                return data
            self._buffer, self._offset = data, 0
        start, self._offset = self._offset, min(self._offset + size, len(self._buffer))
        return self._buffer[start:self._offset]

    # -- lifecycle --------------------------------------------------------------------------------

    async def connect(self) -> None:
        await self.client.__aenter__()
        sock = self._paho.socket()
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            self._loop.add_reader(sock.fileno(), self._read)
            self._loop.call_soon(self._read)

    async def wait_closed(self) -> None:
        """Until the broker goes away: raises aiomqtt.MqttError with the reason."""
        async for _ in self.client.messages:     # never yields: messages go to `deliver`
            pass

    async def close(self) -> None:
        self._send_pubacks()            # the last handlers' acknowledgements go out before the DISCONNECT
        self.closed = True
        try:
            await self.client.__aexit__(None, None, None)
        except aiomqtt.MqttError:
            pass  # already gone; nothing left to close
