"""Jobs for tests/test_dispatch_ids.py: a job that dispatches a copy of itself from handle()."""
from __future__ import annotations

from core.job import Job
from core.queue import dispatch
from tests.jobs.sample_jobs import record


class SelfCopyJob(Job):
    """Dispatches itself (the running instance) `copies` times, then records its own id again."""
    queue = "ids"

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.copies = 0

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id)
        if self.copies:
            self.copies -= 1
            copy = await dispatch(self)
            record(self.log, event="dispatched", job_id=self.job_id, copy=copy)
