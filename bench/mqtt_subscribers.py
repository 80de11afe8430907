"""The MQTT ingest scenario's subscribers (bench/mqtt_ingest.py), each `python -m bench.mqtt_subscribers
KIND PORT N QOS`: subscribe to bench/ingest/+ and bench/ready, print READY when a message on bench/ready
shows the subscriptions are in place, take N messages, print one JSON line
{"first": t, "last": t, "count": n, "rss_mb": peak} and exit.

- ours: `MqttApp` (what `python main.py run` serves) with the route `bench/ingest/{n}` whose handler
  awaits `NoopJob.dispatch(n=...)` onto Redis (db 11); `last` is taken when the N-th dispatch returned,
  i.e. the N-th job is stored. QoS 1 messages are acknowledged after their handler (SPEC 18).
- route: the same app and route, whose handler only counts (no dispatch): what the MQTT side costs.
- bare: an aiomqtt client that only counts messages: the limit of reading MQTT in Python here.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time

TOPIC = "bench/ingest/+"
READY = "bench/ready"


def ready() -> None:
    print("READY", flush=True)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def report(first: float, last: float, count: int, **more: object) -> None:
    print(json.dumps({"first": first, "last": last, "count": count, "rss_mb": round(peak_rss_mb(), 1), **more}),
          flush=True)


async def bare(port: int, n: int, qos: int) -> None:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(TOPIC, qos=qos)
        await client.subscribe(READY)
        count, first, announced = 0, 0.0, False
        async for message in client.messages:
            if message.topic.value == READY:
                announced = announced or ready() or True
                continue
            if count == 0:
                first = time.time()
            count += 1
            if count == n:
                report(first, time.time(), count)
                return


async def route(port: int, n: int, qos: int) -> None:
    await ours(port, n, qos, dispatch=False)


async def ours5(port: int, n: int, qos: int) -> None:
    """Ours over MQTT 5 (MQTT_PROTOCOL=5): the app's Receive Maximum (twice MQTT_MAX_CONCURRENT) lets
    the broker keep that many QoS 1 messages unacknowledged, where MQTT 3.1.1 leaves it to the
    broker's own max_inflight_messages (mosquitto: 20)."""
    os.environ["MQTT_PROTOCOL"] = "5"
    await ours(port, n, qos)


async def ours(port: int, n: int, qos: int, dispatch: bool = True) -> None:
    from bench.harness import OUR_DB, REDIS_HOST, REDIS_PORT

    os.environ.update({"QUEUE_CONNECTION": "redis", "REDIS_HOST": REDIS_HOST, "REDIS_PORT": str(REDIS_PORT),
                       "REDIS_DB": str(OUR_DB), "MQTT_PORT": str(port), "LOG_LEVEL": "WARNING"})
    from bench.jobs import NoopJob
    from bootstrap.app import create_app
    from core.mqtt import MqttApp
    from core.router import Router

    state = {"count": 0, "first": 0.0}
    app_done = asyncio.Event()

    async def ingest(n_: str) -> None:
        if not state["first"]:
            state["first"] = time.time()
        if dispatch:
            await NoopJob.dispatch(n=int(n_))
        state["count"] += 1
        if state["count"] == n:
            report(state["first"], time.time(), n)
            app_done.set()

    announced = []

    async def on_ready() -> None:
        if not announced:
            announced.append(ready())

    async with create_app() as application:
        router = Router()
        router.on("bench/ingest/{n_}", ingest, qos=qos)
        router.on(READY, on_ready)
        mqtt = MqttApp(router, application.config.mqtt, app_name="bench")
        runner = asyncio.create_task(mqtt.run(handle_signals=False))
        await app_done.wait()
        mqtt.stop()
        await runner


def main() -> None:
    kind, port, n, qos = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    import logging

    logging.disable(logging.WARNING)        # a log line per message would measure the terminal
    asyncio.run({"bare": bare, "ours": ours, "ours5": ours5, "route": route}[kind](port, n, qos))


if __name__ == "__main__":
    main()
