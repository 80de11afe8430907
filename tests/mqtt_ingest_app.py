"""`python -m tests.mqtt_ingest_app`: an MQTT app as a user writes one, for the delivery tests: the route
`ingest/{n}` dispatches tests.jobs.mqtt_jobs.MessageJob(n) onto the queue (QUEUE_CONNECTION, DB_*), after
waiting for the file INGEST_GATE to exist when that is set (handlers held back while a flood arrives)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from core.console.base import run_async
from core.mqtt import MqttApp
from core.router import Router
from tests.jobs.mqtt_jobs import MessageJob


async def ingest(n: str) -> None:
    gate = os.environ.get("INGEST_GATE")
    while gate and not Path(gate).exists():
        await asyncio.sleep(0.05)
    await MessageJob.dispatch(n=int(n))


async def serve(app) -> None:
    router = Router()
    router.on("ingest/{n}", ingest, qos=int(os.environ.get("INGEST_QOS", "1")))
    await MqttApp(router, app.config.mqtt, app_name="ingest").run()


if __name__ == "__main__":
    raise SystemExit(run_async(serve))
