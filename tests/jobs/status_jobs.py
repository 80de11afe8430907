"""Jobs for the SPEC 11 tests: results, failures, priorities, cancelling, progress."""
from __future__ import annotations

import asyncio
from pathlib import Path

from core.job import Job
from tests.jobs.sample_jobs import record


class AddJob(Job):
    keep_result = 60

    def __init__(self) -> None:
        super().__init__()
        self.a = 0
        self.b = 0

    async def handle(self) -> int:
        return self.a + self.b


class NoResultJob(Job):
    async def handle(self) -> int:
        return 1


class AlwaysFailsJob(Job):
    keep_result = 60
    max_tries = 1

    async def handle(self) -> None:
        raise ValueError("sensor 7 is offline")


class UnkeepableResultJob(Job):
    keep_result = 60

    async def handle(self) -> object:
        return object()


class OrderJob(Job):
    """Records its name when it runs, to read the order jobs ran in."""
    keep_result = 0

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.name = ""

    async def handle(self) -> None:
        record(self.log, event="ran", name=self.name)


class FlakyOrderJob(OrderJob):
    """Records its run, and fails its first attempt (retried at once)."""

    async def handle(self) -> None:
        await super().handle()
        if self.attempts == 1:
            raise RuntimeError("first attempt fails")


class LongJob(Job):
    """Reports progress, then waits until cancelled (or its flag file appears)."""
    keep_result = 60
    timeout = 30
    failed_calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def handle(self) -> str:
        await self.progress(0.4, "parsing")
        record(self.log, event="started", job_id=self.job_id)
        for _ in range(600):
            await asyncio.sleep(0.05)
            if Path(self.log + ".done").exists():
                break
        record(self.log, event="finished", job_id=self.job_id)
        return "finished"

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id)


class RetryLaterJob(Job):
    """Fails its try; retried a minute later."""
    retry_after = 60

    async def handle(self) -> None:
        raise ConnectionError("vendor API unreachable\nsecond line")


class ChainingJob(Job):
    """Pushes a follow-up job when it runs (run_pushed runs that one too)."""
    keep_result = 60

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    async def handle(self) -> int:
        if self.n < 2:
            await ChainingJob.dispatch(n=self.n + 1)
        return self.n * 10


class IntentJob(Job):
    """Does what `action` says: release, delete, fail, raise, or return `value`."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.value = None

    async def handle(self) -> object:
        if self.action == "release":
            self.release(10)
        elif self.action == "delete":
            self.delete()
        elif self.action == "fail":
            self.fail("the device said no")
        elif self.action == "raise":
            raise ValueError(f"attempt {self.attempts} broke")
        return self.value


class SkipsItselfJob(Job):
    """Keeps results, and deletes itself without success (SPEC 9: state skipped)."""
    keep_result = 60

    async def handle(self) -> None:
        self.delete()


class CancelledThenFailsJob(Job):
    """Is cancelled (by itself, through job_ref, as a user's cancel() would) while it runs, then raises
    before any worker heartbeat could have seen the request."""
    keep_result = 60
    retry_after = 0
    max_tries = 3

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.conn = ""

    async def handle(self) -> None:
        from core.queue import job_ref

        record(self.log, event="started", job_id=self.job_id)
        assert await job_ref(self.job_id, connection=self.conn, queue=self.queue).cancel() == "reserved"
        raise RuntimeError("the upstream call failed")

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id)


class CancelledOnItsLastTryJob(CancelledThenFailsJob):
    max_tries = 1
