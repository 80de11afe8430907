import logging

from core.job import Job

log = logging.getLogger("app.jobs")


class ProcessDataJob(Job):
    """Summarises a batch of sensor readings; shows list and dict attributes surviving the queue."""

    max_tries = 3
    timeout = 60
    retry_after = 5
    queue = "data"

    def __init__(self) -> None:
        super().__init__()
        self.device_id: str | None = None
        self.readings: list[float] = []
        self.meta: dict = {}

    async def handle(self) -> None:
        if not self.readings:
            log.info("device %s sent no readings", self.device_id)
            return
        average = sum(self.readings) / len(self.readings)
        log.info("device %s: %d readings, avg %.2f, min %.2f, max %.2f (%s)", self.device_id,
                 len(self.readings), average, min(self.readings), max(self.readings), self.meta)
