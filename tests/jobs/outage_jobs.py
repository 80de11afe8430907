"""A job for the outage tests: records each run ("<job id> <attempt>"), then takes a moment, so that
an outage can land while it runs and its acknowledge has to wait for the store to come back."""
from __future__ import annotations

import asyncio

from core.job import Job
from tests.jobs.contract_jobs import append_line


class OutageJob(Job):
    queue = "outage"
    max_tries = 5
    timeout = 20

    def __init__(self) -> None:
        super().__init__()
        self.path = ""
        self.seconds = 0.0

    async def handle(self) -> None:
        append_line(self.path, f"{self.job_id} {self.attempts}")
        await asyncio.sleep(self.seconds)
