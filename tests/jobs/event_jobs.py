"""Jobs for tests/test_worker_events.py: each records when its handle() ran."""
from __future__ import annotations

import asyncio
import os
import time

from core.job import Job
from tests.jobs.sample_jobs import record


class TimedJob(Job):
    """Records its start and end with the time, so a test can order them against the events heard."""
    max_tries = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 0.0

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, pid=os.getpid(), t=time.time())
        await asyncio.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, t=time.time())


class LastTryJob(TimedJob):
    """One try, long enough to be killed in: its worker's death uses it up."""
    max_tries = 1
    timeout = 30


class RecordingMiddleware:
    """Records when it begins, then runs the rest of the chain."""

    def __init__(self, log: str = "") -> None:
        self.log = log

    async def __call__(self, job, next):
        record(self.log, event="middleware", job_id=job.job_id, t=time.time())
        return await next(job)


class MiddlewareTimedJob(TimedJob):
    def middleware(self) -> list:
        return [RecordingMiddleware(self.log)]
