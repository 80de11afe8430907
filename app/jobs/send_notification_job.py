import logging

from core.job import Job

log = logging.getLogger("app.jobs")


class SendNotificationJob(Job):
    max_tries = 5
    timeout = 10
    retry_after = [1, 5, 30]
    queue = "notifications"

    def __init__(self) -> None:
        super().__init__()
        self.user_id: int | None = None
        self.message: str = ""
        self.channels: list[str] = ["push"]

    async def handle(self) -> None:
        for channel in self.channels:
            log.info("notify user %s via %s: %s", self.user_id, channel, self.message)
