"""`python main.py run` while the broker connection and then the queue's Redis are cut and restored:
it reconnects and resubscribes, a handler's dispatch during the queue outage is one logged line, and
the app keeps serving; the jobs dispatched outside the outage are stored once each."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from bootstrap.app import create_app
from tests.mqtt_support import APP_ROUTES, AppProcess, publish

pytestmark = pytest.mark.slow


async def wait_count(app: AppProcess, text: str, count: int, timeout: float = 15) -> None:
    """Read the app's output until `count` lines contain `text`."""
    deadline = time.monotonic() + timeout
    while sum(text in line for line in app.lines) < count:
        remaining = deadline - time.monotonic()
        line = await asyncio.wait_for(asyncio.to_thread(app.proc.stdout.readline), max(0.1, remaining)) \
            if remaining > 0 else ""
        if not line:
            raise AssertionError(f"{count} x {text!r} never appeared in the output of main.py run:\n{app.output}")
        app.lines.append(line.rstrip("\n"))


@APP_ROUTES
async def test_run_rides_out_a_broker_cut_and_a_queue_outage(mqtt_proxy, redis_proxy, monkeypatch):
    monkeypatch.setenv("QUEUE_DISPATCH_TIMEOUT", "1")
    device = f"dev-{uuid.uuid4().hex[:8]}"
    topic = f"devices/{device}/status"
    app = AppProcess()
    try:
        await wait_count(app, f"Connected to MQTT broker at 127.0.0.1:{mqtt_proxy.port}", 1)
        await publish(topic, {"readings": [1.5, 2.5, 3.5]})
        await wait_count(app, f"device {device}: 3 readings queued", 1)

        mqtt_proxy.cut()
        await wait_count(app, "MQTT connection lost: ", 1)
        await asyncio.sleep(1.5)                          # reconnect attempts fail meanwhile
        mqtt_proxy.restore()
        await wait_count(app, "Connected to MQTT broker", 2)
        await publish(topic, {"readings": [4.5, 5.5]})
        await wait_count(app, f"device {device}: 2 readings queued", 1)

        redis_proxy.cut()
        await publish(topic, {"readings": [6.25]})
        await wait_count(app, f"Handler failed on topic {topic}", 1)
        redis_proxy.restore()
        await publish(topic, {"readings": [7.5, 8.5, 9.5, 10.5]})
        await wait_count(app, f"device {device}: 4 readings queued", 1)
        assert app.terminate() == 0
    finally:
        app.kill()
    out = app.output
    [failed] = [line for line in app.lines if f"Handler failed on topic {topic}" in line]
    assert "QueueConnectionError: Cannot dispatch ProcessDataJob [" in failed, failed
    assert f"Redis at 127.0.0.1:{redis_proxy.port} is unreachable (" in failed, failed
    assert out.count("MQTT connection lost") == 1, out
    assert "Cannot connect to MQTT broker" not in out, out      # the retries of a reported loss are not news
    assert "Traceback" not in out, out

    async with create_app() as booted:
        conn = await booted.queue.connection()
        stored = [await conn.reserve(["data"]) for _ in range(4)]
    payloads = [job.payload for job in stored if job is not None]
    assert len(payloads) == 3, payloads                  # the three dispatched outside the outage, once each
    assert not any("6.25" in payload for payload in payloads)
