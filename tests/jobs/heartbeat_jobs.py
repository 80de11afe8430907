"""Jobs for the heartbeat tests: job code that blocks the event loop from its very first step."""
from __future__ import annotations

import os
import time

from core.job import Job
from tests.jobs.sample_jobs import record


class LoopBlockerJob(Job):
    """Blocks the loop with time.sleep for `seconds` at once, with no await before: jobs a worker
    reserved in one call then block one after another in a single pass of the loop, each within
    its own timeout (each one's timeout starts when its turn comes)."""
    queue = "heartbeat"
    max_tries = 2           # a lapsed reservation shows as a second start, not a MaxAttemptsExceededError
    timeout = 1.95          # the largest accepted at QUEUE_VISIBILITY_TIMEOUT=4

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 1.0

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, pid=os.getpid(), t=time.time())
        time.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, pid=os.getpid(), t=time.time())
