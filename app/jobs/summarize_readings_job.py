import logging

from core.job import Job

log = logging.getLogger("app.jobs")


class SummarizeReadingsJob(Job):
    """Request/reply through the queue: a device asks on devices/{id}/summary, a worker computes the
    summary and publishes it back on the reply topic the route handler chose (SPEC 18)."""

    max_tries = 3
    timeout = 30
    retry_after = 2
    queue = "data"

    def __init__(self) -> None:
        super().__init__()
        self.device_id: str | None = None
        self.readings: list[float] = []
        self.reply_to: str = ""
        self.request_id: str | int | None = None

    async def handle(self) -> None:
        values = self.readings or [0.0]
        summary = {"request_id": self.request_id, "device_id": self.device_id, "count": len(self.readings),
                   "average": round(sum(values) / len(values), 3), "min": min(values), "max": max(values)}
        # qos=1: handle() returns once the broker has the reply; if it cannot be reached the try fails
        # and the retry publishes again.
        await self.publish(self.reply_to, summary, qos=1)
        log.info("device %s: summary of %d readings sent to %s", self.device_id, len(self.readings), self.reply_to)
