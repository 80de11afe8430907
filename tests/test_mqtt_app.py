"""The MQTT app against the real Mosquitto: routing, middleware, replies, shared subscriptions, failing
handlers, reconnecting, and `python main.py run` from a published message to a job run by queue:work."""
from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid

import pytest

from core.router import Router
from tests.conftest import run_cli
from tests.faults.proxy import FaultProxy
from tests.mqtt_support import APP_ROUTES, AppProcess, mqtt_config, publish, running_app, subscribed, topic_prefix
from tests.servers import MQTT, require


@pytest.fixture(autouse=True)
def broker():
    require(MQTT)


async def next_item(queue: asyncio.Queue, timeout: float = 5):
    return await asyncio.wait_for(queue.get(), timeout)


async def test_routes_receive_parameters_payload_and_topic():
    prefix = topic_prefix()
    got: asyncio.Queue = asyncio.Queue()

    async def status(device_id, payload, topic):
        await got.put((device_id, payload, topic))

    router = Router()
    router.on(prefix + "/devices/{device_id}/status", status, qos=1)
    async with running_app(router):
        await publish(f"{prefix}/devices/d-42/status", {"battery": 87})
        await publish(f"{prefix}/devices/d-43/status", "online")
        await publish(f"{prefix}/devices/d-44/other", "not routed")
        first, second = await next_item(got), await next_item(got)
    assert first == ("d-42", {"battery": 87}, f"{prefix}/devices/d-42/status")
    assert second == ("d-43", "online", f"{prefix}/devices/d-43/status")
    assert got.empty()


async def test_middleware_runs_in_order_and_can_stop_a_message():
    prefix = topic_prefix()
    seen: list[str] = []
    done: asyncio.Queue = asyncio.Queue()

    async def outer(context, next):
        seen.append(f"outer {context.params['id']}")
        return await next(context)

    async def only_admins(context, next):
        if context.payload.get("user") != "admin":
            seen.append(f"refused {context.params['id']}")
            await done.put(context.params["id"])
            return None
        return await next(context)

    async def handler(id, payload):
        seen.append(f"handler {id}")
        await done.put(id)

    router = Router()
    with router.group(prefix=prefix, middleware=[outer, only_admins]) as group:
        group.on("commands/{id}", handler)
    async with running_app(router):
        await publish(f"{prefix}/commands/1", {"user": "mallory"})
        assert await next_item(done) == "1"
        await publish(f"{prefix}/commands/2", {"user": "admin"})
        assert await next_item(done) == "2"
    assert seen == ["outer 1", "refused 1", "outer 2", "handler 2"]


async def test_handler_replies_on_a_response_topic():
    prefix = topic_prefix()

    async def ping(device_id, payload, client):
        await client.publish(f"{prefix}/devices/{device_id}/pong", {"echo": payload}, qos=1)

    router = Router()
    router.on(prefix + "/devices/{device_id}/ping", ping)
    async with running_app(router), subscribed(f"{prefix}/devices/+/pong") as replies:
        await publish(f"{prefix}/devices/d1/ping", {"n": 1})
        assert await next_item(replies) == (f"{prefix}/devices/d1/pong", {"echo": {"n": 1}})


async def test_shared_subscription_gives_each_message_to_one_instance():
    prefix = topic_prefix()
    handled: dict[str, list[str]] = {"a": [], "b": []}

    def router_for(name: str) -> Router:
        async def data(sensor_id):
            handled[name].append(sensor_id)

        router = Router()
        router.on(prefix + "/sensors/{sensor_id}/data", data, qos=1, shared=True)
        return router

    config = mqtt_config()          # both instances in the same shared group
    async with running_app(router_for("a"), config), running_app(router_for("b"), config):
        for i in range(20):
            await publish(f"{prefix}/sensors/s{i}/data", {"v": i})
        for _ in range(100):
            if len(handled["a"]) + len(handled["b"]) >= 20:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)    # a duplicate delivery would show up here
    assert sorted(handled["a"] + handled["b"], key=lambda s: int(s[1:])) == [f"s{i}" for i in range(20)]
    assert handled["a"] and handled["b"], "the broker should share the messages between both instances"


async def test_messages_are_handled_concurrently_up_to_the_limit():
    prefix = topic_prefix()
    running, most, handled = 0, 0, []
    release = asyncio.Event()

    async def slow(n):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        handled.append(n)

    router = Router()
    router.on(prefix + "/jobs/{n}", slow, qos=1)
    async with running_app(router, mqtt_config(max_concurrent_messages=3)):
        for n in range(8):
            await publish(f"{prefix}/jobs/{n}")
        for _ in range(100):
            if running == 3:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)            # time for a fourth handler to start, were the limit not kept
        assert running == 3
        release.set()
        for _ in range(100):
            if len(handled) == 8:
                break
            await asyncio.sleep(0.02)
    assert sorted(handled, key=int) == [str(n) for n in range(8)]
    assert most == 3


async def test_a_raising_handler_is_logged_and_the_app_keeps_serving(caplog):
    prefix = topic_prefix()
    got: asyncio.Queue = asyncio.Queue()

    async def status(device_id, payload: dict):
        if payload.get("explode"):
            raise RuntimeError("sensor table is corrupt")
        await got.put(device_id)

    router = Router()
    router.on(prefix + "/devices/{device_id}/status", status)
    with caplog.at_level(logging.INFO):
        async with running_app(router):
            await publish(f"{prefix}/devices/bad/status", {"explode": True})
            await publish(f"{prefix}/devices/text/status", "not json")
            await publish(f"{prefix}/devices/good/status", {"explode": False})
            assert await next_item(got) == "good"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    route = (f"route {prefix}/devices/{{device_id}}/status -> "
             "test_a_raising_handler_is_logged_and_the_app_keeps_serving.<locals>.status")
    assert f"Handler failed on topic {prefix}/devices/bad/status ({route}): RuntimeError: sensor table is corrupt" \
        in errors
    assert (f"Payload rejected on topic {prefix}/devices/text/status ({route}): expects a JSON object as payload, "
            f"got text 'not json'") in errors


async def test_stop_lets_a_running_handler_finish_and_reply():
    prefix = topic_prefix()
    started = asyncio.Event()

    async def slow(payload, client):
        started.set()
        await asyncio.sleep(0.5)
        await client.publish(f"{prefix}/done", payload)

    router = Router()
    router.on(prefix + "/work", slow)
    async with subscribed(f"{prefix}/done") as replies:
        async with running_app(router) as app:
            await publish(f"{prefix}/work", "job-1")
            await asyncio.wait_for(started.wait(), 5)
            app.stop()          # leaving the block waits for run() to return
        assert await next_item(replies) == (f"{prefix}/done", "job-1")


async def test_reconnects_and_resubscribes_after_the_broker_goes_away(caplog):
    """The broker is reached through a proxy the test cuts: the shared broker is never stopped."""
    prefix = topic_prefix()
    got: asyncio.Queue = asyncio.Queue()

    async def handler(n):
        await got.put(n)

    router = Router()
    router.on(prefix + "/count/{n}", handler, qos=1)
    with FaultProxy(MQTT[1]) as proxy, caplog.at_level(logging.INFO):
        async with running_app(router, mqtt_config(port=proxy.port)) as app:
            await publish(f"{prefix}/count/1")
            assert await next_item(got) == "1"

            proxy.cut()
            await asyncio.sleep(0.5)                        # let the app notice and retry at least once
            assert not app.connected.is_set()
            proxy.restore()
            await asyncio.wait_for(app.connected.wait(), 10)

            await publish(f"{prefix}/count/2")
            assert await next_item(got) == "2"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("MQTT connection lost: ") and "reconnecting in" in m for m in messages), messages
    assert sum(m.startswith("Connected to MQTT broker") for m in messages) == 2


@APP_ROUTES
async def test_published_status_becomes_a_job_that_queue_work_runs():
    """The whole path as a user walks it: `run`, mosquitto-style publishes, SIGTERM, `queue:work`."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    app = AppProcess(env={"MQTT_PASSWORD": "s3cret-pass"})
    try:
        await app.wait_for("Connected to MQTT broker at 127.0.0.1:1883")
        await publish(f"devices/{device}/status", "garbage")                       # handler cannot use it
        await publish(f"devices/{device}/status", {"readings": ["x"]})              # handler raises
        await publish(f"devices/{device}/status", {"readings": [20, 21.5, 22.5], "meta": {"fw": "1.2"}})
        await app.wait_for(f"device {device}: 3 readings queued as ProcessDataJob")
        assert app.terminate() == 0
    finally:
        app.kill()
    out = app.output
    assert f"Payload rejected on topic devices/{device}/status (route devices/{{device_id}}/status -> " \
           "DeviceController.status): expects a JSON object as payload, got text 'garbage'" in out
    assert f"Handler failed on topic devices/{device}/status (route devices/{{device_id}}/status -> " \
           "DeviceController.status): ValueError: readings must be a list of numbers, got ['x']" in out
    assert "Received SIGTERM" in out and out.rstrip().endswith("MQTT app stopped")
    assert "s3cret-pass" not in out

    work = run_cli("queue:work", "--queue", "data", "--stop-when-empty", check=True)
    assert f"device {device}: 3 readings, avg 21.33, min 20.00, max 22.50" in work.stdout
    assert "DONE    ProcessDataJob" in work.stdout


@APP_ROUTES
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_replies_on_the_response_topic_and_stops_on_a_signal(sig):
    device = f"dev-{uuid.uuid4().hex[:8]}"
    app = AppProcess()
    try:
        await app.wait_for("Connected to MQTT broker")
        async with subscribed(f"devices/{device}/pong") as replies:
            await publish(f"devices/{device}/ping", {"hello": 1})
            topic, reply = await next_item(replies)
        assert topic == f"devices/{device}/pong"
        assert reply["device_id"] == device and reply["received"] == {"hello": 1}
        assert app.terminate(sig) == 0
    finally:
        app.kill()
    assert f"Received {sig.name}" in app.output and "Traceback" not in app.output


def test_run_gives_up_on_a_broker_it_never_reached_with_one_line():
    from tests.conftest import run_cli

    started = time.monotonic()
    result = run_cli("run", env={"MQTT_PORT": "1", "MQTT_PASSWORD": "s3cret-pass", "MQTT_CONNECT_TIMEOUT": "2"},
                     timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == "Cannot connect to MQTT broker at 127.0.0.1:1: Connection refused"
    assert "retrying in 0.5s" in result.stdout                 # it did try again before giving up
    assert time.monotonic() - started < 10
    assert "s3cret-pass" not in result.stdout + result.stderr and "Traceback" not in result.stdout + result.stderr


async def test_run_keeps_retrying_an_unreachable_broker_and_stops_on_sigterm():
    app = AppProcess(env={"MQTT_PORT": "1", "MQTT_PASSWORD": "s3cret-pass", "MQTT_CONNECT_TIMEOUT": "0"})
    try:
        line = await app.wait_for("Cannot connect to MQTT broker at 127.0.0.1:1")
        assert "retrying in 0.5s" in line
        await app.wait_for("retrying in 1s")
        assert app.terminate() == 0
    finally:
        app.kill()
    assert "s3cret-pass" not in app.output
    assert "Traceback" not in app.output
