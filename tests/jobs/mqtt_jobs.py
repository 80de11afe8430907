"""Jobs of the MQTT delivery tests: one job per message (counted in the store), and a job that publishes."""
from __future__ import annotations

from core.job import Job


class MessageJob(Job):
    """Dispatched once per MQTT message by tests/mqtt_ingest_app.py; `n` is the message's own number."""

    queue = "ingest"

    def __init__(self) -> None:
        super().__init__()
        self.n: int = 0

    async def handle(self) -> None:
        return None


class PublishingJob(Job):
    """Publishes `payload` on `topic` from handle(), as a device's reply would be."""

    max_tries = 2

    def __init__(self) -> None:
        super().__init__()
        self.topic = ""
        self.payload: object = None

    async def handle(self) -> None:
        await self.publish(self.topic, self.payload, qos=1)
