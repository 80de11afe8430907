"""Jobs for the worker's audit tests (issue 11): loop blocking, store calls under a timeout, failing steps."""
from __future__ import annotations

import asyncio
import os
import time

from core.job import Job
from tests.jobs.sample_jobs import record


class SiblingJob(Job):
    """Awaits `seconds` beside a job that blocks the loop: its reservation must hold meanwhile."""
    queue = "sibling"
    max_tries = 1
    timeout = 60

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 1.0

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, pid=os.getpid(), t=time.time())
        await asyncio.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts, pid=os.getpid(), t=time.time())


class BlockerJob(Job):
    """Awaits `first`, then blocks the loop with time.sleep for `seconds` (cut by the watchdog at its timeout)."""
    queue = "blockers"
    max_tries = 1
    timeout = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.first = 0.0
        self.seconds = 1.0

    async def handle(self) -> None:
        await asyncio.sleep(self.first)
        record(self.log, event="block", job_id=self.job_id, t=time.time())
        time.sleep(self.seconds)
        record(self.log, event="unblocked", job_id=self.job_id, t=time.time())

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, t=time.time(), exception=type(exception).__name__)


class CopyJob(Job):
    """What DispatchLoopJob dispatches; never worked in the tests (its queue is not given to the worker)."""
    queue = "copies"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    async def handle(self) -> None:
        pass


class DispatchLoopJob(Job):
    """Dispatches to the worker's own store in a loop for `seconds`, ignoring cancellation: the
    watchdog's signal keeps arriving while the job is inside the framework's store calls."""
    max_tries = 1
    timeout = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 3.0

    async def handle(self) -> None:
        until = time.monotonic() + self.seconds
        n = 0
        while time.monotonic() < until:
            try:
                job_id = await CopyJob.dispatch(n=n)
            except asyncio.CancelledError:
                continue
            record(self.log, event="dispatched", job_id=job_id, n=n)
            n += 1

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=type(exception).__name__)


class FailsJob(Job):
    """handle() raises on every try; failed() records each call (it must run once per job)."""
    max_tries = 1
    timeout = 30

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.failed_seconds = 0.0

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts, pid=os.getpid())
        raise ValueError(f"fails on attempt {self.attempts}")

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=str(exception), pid=os.getpid())
        await asyncio.sleep(self.failed_seconds)
        record(self.log, event="failed-end", job_id=self.job_id)


class SucceedsJob(Job):
    """Succeeds on every try; records each run."""
    max_tries = 3
    timeout = 30

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 0.0

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts, pid=os.getpid())
        await asyncio.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts)


class FailsOnceJob(Job):
    """Fails its first attempt, succeeds after; failed() blocks the loop for `failed_block` seconds (a stalled
    worker) before it records its end."""
    max_tries = 1
    timeout = 10

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.failed_block = 0.0

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts, pid=os.getpid())
        if self.attempts == 1:
            raise ValueError("fails on attempt 1")

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=str(exception), pid=os.getpid())
        time.sleep(self.failed_block)
        record(self.log, event="failed-end", job_id=self.job_id, pid=os.getpid())
