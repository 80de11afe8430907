"""Jobs publish (SPEC 18): `await self.publish(topic, payload, qos=1)` from handle(), through one connection
per worker process opened on first use and closed at exit; and the request/reply example, a device
getting its job's result back on a reply topic."""
from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt
import pytest

from tests.conftest import run_cli
from tests.jobs.mqtt_jobs import PublishingJob
from tests.mqtt_support import APP_ROUTES, AppProcess, LocalMosquitto, publish, subscribed
from tests.servers import MQTT, require


@pytest.fixture(autouse=True)
def broker():
    require(MQTT)


async def test_a_worker_publishes_from_jobs_over_one_connection_closed_at_exit():
    with LocalMosquitto("log_type all") as broker:
        async with aiomqtt.Client("127.0.0.1", broker.port) as device:
            await device.subscribe("replies/#", qos=1)
            for n in range(6):
                await PublishingJob.dispatch(topic=f"replies/{n}", payload={"n": n})
            work = await asyncio.to_thread(run_cli, "queue:work", "--stop-when-empty", "--concurrency", "3",
                                           env={"MQTT_PORT": str(broker.port)}, check=True)
            got = []
            async with asyncio.timeout(10):
                async for message in device.messages:
                    got.append((message.topic.value, json.loads(message.payload)))
                    if len(got) == 6:
                        break
        assert sorted(got) == [(f"replies/{n}", {"n": n}) for n in range(6)]
        assert work.stdout.count("DONE    PublishingJob") == 6
        log = broker.log()
    connected = [line for line in log.splitlines() if "New client connected" in line and "-publisher-" in line]
    assert len(connected) == 1, log                       # one connection for the six jobs
    publisher = connected[0].split(" as ")[1].split()[0]
    assert f"Received DISCONNECT from {publisher}" in log    # closed when the worker stopped, not dropped


async def test_a_job_whose_broker_is_down_fails_its_try_and_is_retried():
    await PublishingJob.dispatch(topic="replies/x", payload=1)
    work = await asyncio.to_thread(run_cli, "queue:work", "--stop-when-empty",
                                   env={"MQTT_PORT": "1", "MQTT_CONNECT_TIMEOUT": "1"})
    assert work.returncode == 0
    assert "Cannot connect to MQTT broker at 127.0.0.1:1: Connection refused" in work.stdout
    assert "RETRY" in work.stdout and "FAIL" in work.stdout     # max_tries = 2: retried once, then failed


@APP_ROUTES
async def test_request_reply_a_device_gets_its_jobs_result_on_its_reply_topic():
    """The example app: a device asks on devices/{id}/summary; the route dispatches SummarizeReadingsJob;
    `queue:work` runs it and the job publishes the summary on devices/{id}/summary/reply."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    app = AppProcess()
    worker = AppProcess(argv=("main.py", "queue:work", "--queue", "data"))
    try:
        await app.wait_for("Connected to MQTT broker")
        await worker.wait_for("Worker started")
        async with subscribed(f"devices/{device}/summary/reply") as replies:
            await publish(f"devices/{device}/summary", {"request_id": 42, "readings": [20, 21.5, 22.5]})
            topic, reply = await asyncio.wait_for(replies.get(), 15)
        assert topic == f"devices/{device}/summary/reply"
        assert reply == {"request_id": 42, "device_id": device, "count": 3, "average": 21.333, "min": 20,
                         "max": 22.5}
        assert app.terminate() == 0 and worker.terminate() == 0
    finally:
        app.kill()
        worker.kill()
    assert "DONE    SummarizeReadingsJob" in worker.output
