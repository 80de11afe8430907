"""Jobs for SPEC 9's limits and the remaining middleware in real workers: retry_until, max_exceptions,
ThrottlesExceptions, an exception after release(), Skip and FailOnException. Each records what it did
in the file named by its `log` attribute, with times on the queue store's own clock where compared."""
from __future__ import annotations

from core.job import Job
from core.queue.middleware import FailOnException, Skip, ThrottlesExceptions, current_attempt
from tests.jobs.control_jobs import store_clock
from tests.jobs.sample_jobs import record


class _Recording(Job):
    """handle() records its attempt, the store's clock and the releases so far; failed() the exception."""

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def note(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts, at=await store_clock(),
               releases=current_attempt().reserved.releases)

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=f"{type(exception).__name__}: {exception}")


class DeadlineJob(_Recording):
    """Fails every try. With retry_until, max_tries=1 is not the limit: the first failure is retried at
    once, the second 5 s later, past the 4 s deadline, so that reservation fails it unrun."""

    max_tries = 1
    retry_until = 4
    retry_after = [0, 5]

    async def handle(self) -> None:
        await self.note()
        raise RuntimeError(f"deadline job fails (attempt {self.attempts})")


class ExceptionsJob(_Recording):
    """retry_until far off, max_exceptions=3: releases itself once (not a failed attempt), then fails
    every try; it fails after its third failed attempt, the deadline notwithstanding."""

    max_tries = 1
    retry_until = 600
    max_exceptions = 3
    retry_after = 0

    async def handle(self) -> None:
        await self.note()
        if self.attempts == 1:
            return self.release(0)
        raise RuntimeError(f"exceptions job fails (attempt {self.attempts})")


class ThrottledJob(_Recording):
    """ThrottlesExceptions(max_exceptions=2, decay=DECAY) per class, or `.by(key)` when `key` is set;
    raises when `raises` is set."""

    max_tries = 1
    DECAY = 2

    def __init__(self) -> None:
        super().__init__()
        self.key = ""
        self.raises = False

    def middleware(self) -> list:
        throttle = ThrottlesExceptions(max_exceptions=2, decay=self.DECAY)
        return [throttle.by(self.key) if self.key else throttle]

    async def handle(self) -> None:
        await self.note()
        if self.raises:
            raise RuntimeError("throttled job fails")


class BackoffJob(_Recording):
    """ThrottlesExceptions with backoff=2: its failed first try is retried after 2 s, not retry_after's 0."""

    max_tries = 2
    retry_after = 0
    BACKOFF = 2

    def middleware(self) -> list:
        return [ThrottlesExceptions(max_exceptions=10, decay=60, backoff=self.BACKOFF).by("backoff")]

    async def handle(self) -> None:
        await self.note()
        if self.attempts == 1:
            raise RuntimeError("fails once")


class ReleaseThenRaiseJob(_Recording):
    """Calls self.release(DELAY) and then raises on its first attempt: a failed try, retried after DELAY."""

    max_tries = 2
    retry_after = 0
    DELAY = 2

    async def handle(self) -> None:
        await self.note()
        if self.attempts == 1:
            self.release(self.DELAY)
            raise RuntimeError("raised after release()")


class OneTryReleaseThenRaiseJob(ReleaseThenRaiseJob):
    max_tries = 1


class SkipJob(_Recording):
    """Skip.when(blocked) and Skip.unless(a callable of the job, judged when it is about to run)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocked = False
        self.allowed = True

    def middleware(self) -> list:
        return [Skip.when(self.blocked), Skip.unless(lambda job: job.allowed)]

    async def handle(self) -> None:
        await self.note()


class FailOnJob(_Recording):
    """FailOnException([LookupError]) and FailOnException(a callable): `error` says what handle()
    raises on the first attempt ("lookup" and "fatal" on every attempt); the second otherwise succeeds."""

    max_tries = 3
    retry_after = 0

    def __init__(self) -> None:
        super().__init__()
        self.error = ""

    def middleware(self) -> list:
        return [FailOnException([LookupError]), FailOnException(lambda exc, job: str(exc).startswith("fatal"))]

    async def handle(self) -> None:
        await self.note()
        if self.error == "lookup":
            raise KeyError("no such device")       # a LookupError
        if self.error == "fatal":
            raise RuntimeError("fatal: the firmware refused")
        if self.attempts == 1:
            raise RuntimeError("a passing fault")
