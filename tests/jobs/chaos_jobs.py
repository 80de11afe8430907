"""The job the chaos test and `make soak` dispatch (tests/chaos/driver.py).

Each run appends a `start` line before its work and an `end` line after it, to the file named by
`log`, with the job id, attempt, worker pid and wall-clock time. A run whose worker was SIGKILLed
has a `start` and no `end`; one killed after its work but before the worker acknowledged it has
both, and will run again. O_APPEND keeps each line whole with several worker processes writing.

failed() appends a `failed` line (same fields, then the exception's class) and leaves a marker
file beside the log: once failed() has run for a job, every later run of it succeeds, so a job
put back by queue:retry ends well, and a failed_jobs row left for it afterwards is visibly stale.

A job with `block` set blocks its worker's event loop with time.sleep for that long instead of
awaiting: a blocker that awaited once its sleep was over could be held past its own deadline by a
sibling blocking the loop in turn, and a sibling that started after it starts its deadline late.
"""
from __future__ import annotations

import asyncio
import os
import time

from core.job import Job
from tests.jobs.contract_jobs import append_line


class PlannedFailure(Exception):
    """The failure a job was dispatched to have on its early attempts."""


class PassThrough:
    """A job middleware that only passes the job on: every chaos job runs through a pipeline, so the
    judge covers the worker's middleware path (the attempt context, intents, outcomes) too."""

    async def __call__(self, job: Job, next):      # noqa: A002 - the middleware contract's name
        return await next(job)


def chaos_middleware() -> list:
    """The middleware every chaos job runs through (ChaosJob.middleware())."""
    return [PassThrough()]


class ChaosJob(Job):
    queue = "chaos"
    max_tries = 3
    timeout = 12          # above the longest `seconds` the driver plans, with room for a loaded machine
    retry_after = 0

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 0.05   # how long one run awaits
        self.block = 0.0      # how long one run blocks the event loop first (time.sleep)
        self.fail_until = 0   # attempts below this raise PlannedFailure; above max_tries: always fails

    def middleware(self) -> list:
        return chaos_middleware()

    async def handle(self) -> None:
        pid = os.getpid()
        append_line(self.log, f"start {self.job_id} {self.attempts} {pid} {time.time():.6f}")
        outcome = "error"     # a timeout or cancellation
        try:
            if self.block:
                # No await after it: a sibling blocking the loop then could push this run past its deadline.
                time.sleep(self.block)       # noqa: ASYNC251 - blocking the loop is the point
            else:
                await asyncio.sleep(self.seconds)
            if self.attempts < self.fail_until and not os.path.exists(self._marker()):
                outcome = "fail"
                raise PlannedFailure(f"planned failure on attempt {self.attempts}")
            outcome = "ok"
        finally:
            append_line(self.log, f"end {self.job_id} {self.attempts} {pid} {time.time():.6f} {outcome}")

    async def failed(self, exception: BaseException) -> None:
        append_line(self.log, f"failed {self.job_id} {self.attempts} {os.getpid()} {time.time():.6f} "
                              f"{type(exception).__name__}")
        with open(self._marker(), "a"):
            pass

    def _marker(self) -> str:
        return f"{self.log}.failed-{self.job_id}"
