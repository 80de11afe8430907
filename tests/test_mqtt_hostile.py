"""Huge, binary and malformed MQTT messages, and topics with odd characters, through the real Mosquitto:
a handler gets a sensible value or the message is refused in one log line, and the app goes on
serving the next message - in process and as `python main.py run`."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid

import pytest

from core.router import Router
from tests.mqtt_support import APP_ROUTES, AppProcess, publish, running_app, subscribed, topic_prefix
from tests.servers import MQTT, require

DEEP = b"[" * 100_000 + b"]" * 100_000
BIG_BINARY = random.Random(5).randbytes(3 * 2**20)
BIG_JSON = {"readings": list(range(400_000))}        # about 2.6 MB


@pytest.fixture(autouse=True)
def broker():
    require(MQTT)


def text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


MESSAGES = {   # device id -> (raw payload, the value a handler taking any payload gets)
    "binary": (b"\xff\xfe\x00\x80 binary", text_of(b"\xff\xfe\x00\x80 binary")),
    "overlong-utf8": (b"\xc0\xaf\xed\xa0\x80", text_of(b"\xc0\xaf\xed\xa0\x80")),
    "big-binary": (BIG_BINARY, text_of(BIG_BINARY)),
    "big-json": (json.dumps(BIG_JSON).encode(), BIG_JSON),
    "looks-like-json": (b'{"readings": [1, 2,', '{"readings": [1, 2,'),
    "nan": (b'{"t": NaN}', "nan"),
    "too-deep": (DEEP, DEEP.decode()),
    "nul": (b'{"a": "\\u0000", "b": "x\x00y"}', '{"a": "\\u0000", "b": "x\x00y"}'),
    "empty": (b"", ""),
    # Topic levels with odd characters (Mosquitto itself refuses control characters).
    "dev ice": (b"1", 1),
    "\u2603-\u00e9-\u4e2d": (b"2", 2),
    "zero\u200bwidth-rtl\u202eevil": (b"3", 3),
    "line\u2028separator": (b'"4"', "4"),
}


async def test_hostile_messages_reach_handlers_as_sensible_values_and_the_app_goes_on(caplog):
    prefix = topic_prefix()
    got: dict[str, object] = {}
    objects: asyncio.Queue = asyncio.Queue()

    async def anything(device_id, payload, topic):
        assert topic == f"{prefix}/any/{device_id}"
        got[device_id] = payload

    async def objects_only(device_id, payload: dict):
        await objects.put((device_id, payload))

    router = Router()
    router.on(prefix + "/any/{device_id}", anything, qos=1)
    router.on(prefix + "/obj/{device_id}", objects_only, qos=1)
    with caplog.at_level(logging.INFO):
        async with running_app(router):
            for device, (raw, _) in MESSAGES.items():
                await publish(f"{prefix}/any/{device}", raw)
            for device in ("binary", "too-deep", "looks-like-json", "line\u2028separator"):
                await publish(f"{prefix}/obj/{device}", MESSAGES[device][0])
            await publish(f"{prefix}/obj/after", {"ok": True})
            assert await asyncio.wait_for(objects.get(), 15) == ("after", {"ok": True})
            for _ in range(100):
                if len(got) == len(MESSAGES):
                    break
                await asyncio.sleep(0.1)
    nan = got.pop("nan")
    assert nan == {"t": nan["t"]} and nan["t"] != nan["t"]        # Python reads NaN; it is a float
    assert got == {device: value for device, (_, value) in MESSAGES.items() if device != "nan"}
    assert objects.empty()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    refused = [m for m in errors if m.startswith(f"Payload rejected on topic {prefix}/obj/")]
    assert len(refused) == 4 and len(errors) == 4, errors
    assert all(len(m.splitlines()) == 1 and len(m) < 400 for m in refused), refused
    assert f"{prefix}/obj/line\\u2028separator" in "".join(refused)         # escaped, not a line break
    assert "expects a JSON object as payload, got text '[[[[[[[[[[" in "".join(refused)


@APP_ROUTES
async def test_run_survives_hostile_messages_and_answers_the_next_one():
    """`python main.py run` with the app's own routes: status (dispatches a job) and ping (replies)."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    app = AppProcess()
    try:
        await app.wait_for("Connected to MQTT broker")
        await publish(f"devices/{device}/status", BIG_BINARY)
        await publish(f"devices/{device}/status", DEEP)
        await publish(f"devices/{device}/status", json.dumps(BIG_JSON))     # a job too big to queue
        await publish(f"devices/{device}\u2028forged/status", "x")
        await publish(f"devices/{device}/ping", b"\xff\xfe ping")
        await app.wait_for(f"devices/{device}/status (route devices/{{device_id}}/status -> DeviceController.status):"
                           f" PayloadTooLarge: ProcessDataJob payload is ", timeout=30)
        async with subscribed(f"devices/{device}/pong") as replies:
            await publish(f"devices/{device}/ping", {"after": "all that"})
            for _ in range(3):
                topic, reply = await asyncio.wait_for(replies.get(), 15)
                if reply["received"] == {"after": "all that"}:
                    break
        assert reply["device_id"] == device
        assert app.terminate() == 0
    finally:
        app.kill()
    lines = app.output.splitlines()
    rejected = [line for line in lines if f"Payload rejected on topic devices/{device}" in line]
    assert len(rejected) == 3, app.output
    assert any("got text '[[[[" in line for line in rejected)
    assert any(f"devices/{device}\\u2028forged/status" in line for line in rejected)
    assert any("over QUEUE_MAX_PAYLOAD_BYTES (1,048,576); nothing was pushed" in line for line in lines)
    assert "Received SIGTERM" in app.output and app.output.rstrip().endswith("MQTT app stopped")
