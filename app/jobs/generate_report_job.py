import asyncio
import logging

from core.job import Job

log = logging.getLogger("app.jobs")


class GenerateReportJob(Job):
    max_tries = 2
    timeout = 45
    retry_after = 30
    queue = "reports"

    def __init__(self) -> None:
        super().__init__()
        self.report: str = "daily"
        self.period: tuple = ("2026-01-01", "2026-01-31")

    async def handle(self) -> None:
        await asyncio.sleep(0.2)  # stands in for the real query work
        log.info("report %s for %s..%s ready", self.report, self.period[0], self.period[1])
