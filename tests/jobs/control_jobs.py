"""Jobs for SPEC 9 in real workers: middleware, intents, backoff, expiry. Each records what it did in
the file named by its `log` attribute, with times on the queue store's own clock where they are compared."""
from __future__ import annotations

import builtins

import asyncio
import os
from typing import Any

from core.job import Exponential, Job
from core.queue.middleware import RateLimited, WithoutOverlapping, current_attempt
from core.queue.state_redis import RedisState
from tests.jobs.sample_jobs import record


async def store_clock() -> float:
    """The queue store's clock now (the one its middleware state is timed on), from inside an attempt."""
    state = current_attempt().state
    if isinstance(state, RedisState):
        seconds, micros = await state.client.time()
        return seconds + micros / 1_000_000
    row = await state.db.fetchone(f"SELECT {state.db.dialect.clock}")    # type: ignore[attr-defined]
    return float(row[0])


class ClockBefore:
    """Notes the store's clock on the job before the rest of the chain runs (the limiter's hit is later)."""

    async def __call__(self, job: Any, next: Any) -> Any:
        job._before = await store_clock()
        return await next(job)


class LimitedJob(Job):
    """RateLimited(allow=5, every=2): records, for each start, the store's clock before the limiter
    counted it and after: the start's own time on that clock lies between the two."""

    max_tries = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.key = "acceptance"

    def middleware(self) -> list:
        return [ClockBefore(), RateLimited(self.key, allow=5, every=2)]

    async def handle(self) -> None:
        after = await store_clock()
        record(self.log, event="start", job_id=self.job_id, before=self._before, after=after,
               releases=current_attempt().reserved.releases)


class OverlapJob(Job):
    """WithoutOverlapping on one key: records its start and end on the store's clock."""

    max_tries = 1
    timeout = 30

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.key = "acceptance"
        self.seconds = 0.3
        self.release_after = 0.2

    def middleware(self) -> list:
        return [WithoutOverlapping(self.key, release_after=self.release_after)]

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, at=await store_clock(), pid=os.getpid())
        await asyncio.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, at=await store_clock())


class AlwaysFailsJob(Job):
    """Fails every try; retried after Exponential(1, 2, 8) without jitter: 1, 2, 4, 8, 8."""

    max_tries = 6
    retry_after = Exponential(first=1, factor=2, max=8, jitter=0)

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts)
        raise RuntimeError(f"always fails (attempt {self.attempts})")

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id)


class ControlJob(Job):
    """Does what `action` says from inside handle(): release (while attempts <= `releases`), delete,
    fail, or raise ValueError (which dont_retry names); else succeeds."""

    max_tries = 3
    dont_retry = (ValueError,)

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.action = ""
        self.releases = 0

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts)
        if self.action == "release" and self.attempts <= self.releases:
            return self.release(0)
        if self.action == "delete":
            self.delete()
            raise RuntimeError("raised after delete(): the job stays deleted")
        if self.action == "fail":
            self.fail(LookupError("the device is gone"))
            raise RuntimeError("raised after fail(): the job fails with fail()'s exception")
        if self.action == "raise":
            raise ValueError("not worth retrying")
        record(self.log, event="done", job_id=self.job_id, attempts=self.attempts)

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=f"{type(exception).__name__}: {exception}")


class OneTryReleasingJob(ControlJob):
    max_tries = 1


class FewReleasesJob(ControlJob):
    max_releases = 2


class ExpiringJob(Job):
    expires_after = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id)

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=type(exception).__name__)


class QuietlyExpiringJob(ExpiringJob):
    expires_quietly = True


class RaisingJob(Job):
    """Raises the built-in exception `error` names on every try (3 of them), recording each try and failed()."""

    max_tries = 3

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.error = "KeyError"

    async def handle(self) -> None:
        record(self.log, event="handle", attempts=self.attempts)
        raise getattr(builtins, self.error)("the reading was lost")

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", exception=type(exception).__name__)
