"""The job the chaos test and `make soak` dispatch (tests/chaos/driver.py).

Each run appends a `start` line before its work and an `end` line after it, to the file named by
`log`, with the job id, attempt, worker pid and wall-clock time. A run whose worker was SIGKILLed
has a `start` and no `end`; one killed after its work but before the worker acknowledged it has
both, and will run again. O_APPEND keeps each line whole with several worker processes writing.
"""
from __future__ import annotations

import asyncio
import os
import time

from core.job import Job
from tests.jobs.contract_jobs import append_line


class PlannedFailure(Exception):
    """The failure a job was dispatched to have on its early attempts."""


class ChaosJob(Job):
    queue = "chaos"
    max_tries = 3
    timeout = 12          # above the longest `seconds` the driver plans, with room for a loaded machine
    retry_after = 0

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 0.05   # how long one run awaits
        self.fail_until = 0   # attempts below this raise PlannedFailure; above max_tries: always fails

    async def handle(self) -> None:
        pid = os.getpid()
        append_line(self.log, f"start {self.job_id} {self.attempts} {pid} {time.time():.6f}")
        outcome = "error"     # a timeout or cancellation
        try:
            await asyncio.sleep(self.seconds)
            if self.attempts < self.fail_until:
                outcome = "fail"
                raise PlannedFailure(f"planned failure on attempt {self.attempts}")
            outcome = "ok"
        finally:
            append_line(self.log, f"end {self.job_id} {self.attempts} {pid} {time.time():.6f} {outcome}")
