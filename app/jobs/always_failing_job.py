import logging

from core.job import Job

log = logging.getLogger("app.jobs")


class AlwaysFailingJob(Job):
    """Fails on every attempt, to show retries and the failed_jobs table."""

    max_tries = 3
    timeout = 10
    retry_after = [1, 1]
    queue = "default"

    def __init__(self) -> None:
        super().__init__()
        self.reason: str = "the upstream service is down"

    async def handle(self) -> None:
        raise RuntimeError(self.reason)

    async def failed(self, exception: BaseException) -> None:
        log.warning("AlwaysFailingJob gave up after %d attempts: %s", self.attempts, exception)
