"""Handlers for device topics: take a message, hand slow work to a job, reply when asked."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from app.jobs.process_data_job import ProcessDataJob
from app.jobs.summarize_readings_job import SummarizeReadingsJob
from core.router import Publisher

log = logging.getLogger("app.controllers")


def readings_of(payload: dict) -> list:
    """The payload's "readings", refused here, where the topic is known, rather than failing three times
    in a worker."""
    readings = payload.get("readings", [])
    if not isinstance(readings, list) or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) for r in readings):
        raise ValueError(f"readings must be a list of numbers, got {readings!r}")
    return readings


class DeviceController:
    @staticmethod
    async def status(device_id: str, payload: dict) -> None:
        """devices/{device_id}/status, payload {"readings": [21.5, 22.0], "meta": {...}}.

        The summary runs in a worker (`queue:work --queue data`), so this handler returns at once.
        """
        readings = readings_of(payload)
        job_id = await ProcessDataJob.dispatch(device_id=device_id, readings=readings, meta=payload.get("meta", {}))
        log.info("device %s: %d readings queued as ProcessDataJob %s", device_id, len(readings), job_id)

    @staticmethod
    async def summary(device_id: str, payload: dict) -> None:
        """devices/{device_id}/summary, payload {"request_id": 7, "readings": [...]}: a worker answers on
        devices/{device_id}/summary/reply with the same request_id (request/reply through the queue)."""
        readings = readings_of(payload)
        await SummarizeReadingsJob.dispatch(device_id=device_id, readings=readings,
                                            request_id=payload.get("request_id"),
                                            reply_to=f"devices/{device_id}/summary/reply")

    @staticmethod
    async def ping(device_id: str, payload: Any, client: Publisher) -> None:
        """devices/{device_id}/ping: replies on devices/{device_id}/pong with what it received."""
        reply = {"device_id": device_id, "received": payload, "at": datetime.now(timezone.utc).isoformat()}
        await client.publish(f"devices/{device_id}/pong", reply, qos=1)

    @staticmethod
    async def data(sensor_id: str, payload: Any) -> None:
        """sensors/{sensor_id}/data on a shared subscription: each message reaches one app instance."""
        log.info("sensor %s: %s", sensor_id, payload)

    @staticmethod
    async def gps(truck_id: str, payload: dict) -> None:
        """fleet/{truck_id}/gps, payload {"lat": .., "lon": ..}."""
        log.info("truck %s at %s,%s", truck_id, payload.get("lat"), payload.get("lon"))
