"""Jobs the tests dispatch. Each records what happened in a file named by its `log` attribute."""
from __future__ import annotations

import asyncio
import json
import os
import time

from core.job import Job


def record(path: str, **event) -> None:
    """Append one JSON line; O_APPEND keeps lines whole across processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(event) + "\n").encode())
    finally:
        os.close(fd)


def read_events(path) -> list[dict]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class RecordingJob(Job):
    queue = "default"
    max_tries = 3

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.value = None

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts, value=self.value,
               pid=os.getpid(), type=type(self.value).__name__)


class FlakyJob(Job):
    """Fails until attempt `succeed_on`, then succeeds."""
    max_tries = 3
    retry_after = 0

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.succeed_on = 2

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts, t=time.time())
        if self.attempts < self.succeed_on:
            raise ValueError(f"flaky attempt {self.attempts}")

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=str(exception))


class BackoffJob(FlakyJob):
    max_tries = 3
    retry_after = [1, 2]


class FailedRaisesJob(Job):
    max_tries = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def handle(self) -> None:
        raise RuntimeError("handle broke")

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id)
        raise RuntimeError("failed() broke too")


class SleepyJob(Job):
    """Awaits for `seconds`: a timeout must cancel it."""
    max_tries = 1
    timeout = 1

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.seconds = 5.0

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, pid=os.getpid())
        await asyncio.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts)

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed", job_id=self.job_id, exception=f"{type(exception).__name__}: {exception}")


class BlockingJob(SleepyJob):
    """Blocks the event loop with time.sleep: only the watchdog can stop it."""
    max_tries = 2
    timeout = 1

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, pid=os.getpid())
        time.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts)


class BusyLoopJob(SleepyJob):
    max_tries = 1
    timeout = 1

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, pid=os.getpid())
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            pass
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts)


class NotAJob:
    """A plain class a forged payload may name; it must never be instantiated."""
    instantiated = False

    def __init__(self) -> None:
        NotAJob.instantiated = True


class FailedBlocksJob(FailedRaisesJob):
    """A failed() that blocks the event loop: the watchdog must cut it, and the job still be recorded."""
    timeout = 1

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed-start", job_id=self.job_id)
        time.sleep(30)


class UninterruptibleJob(SleepyJob):
    """Stands in for C code that never returns to Python: it blocks the watchdog's signal, then sleeps."""
    max_tries = 1
    timeout = 1

    async def handle(self) -> None:
        import signal

        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, pid=os.getpid())
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        time.sleep(self.seconds)
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts)


class IgnoresCancelJob(SleepyJob):
    """Swallows every CancelledError for `seconds` (a careless retry loop): asyncio.timeout alone cannot end it."""
    max_tries = 2
    timeout = 1

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, t=time.time())
        until = time.monotonic() + self.seconds
        while time.monotonic() < until:
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts, t=time.time())


class CatchesCancelOnceJob(SleepyJob):
    """Catches the first CancelledError, then awaits `seconds` more (a clean-up that takes too long)."""
    max_tries = 1
    timeout = 1

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, t=time.time())
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            record(self.log, event="cancelled", job_id=self.job_id, t=time.time())
            try:
                await asyncio.sleep(self.seconds)
            except asyncio.CancelledError:
                record(self.log, event="cancelled again", job_id=self.job_id, t=time.time())
                raise
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts)


class FailedIgnoresCancelJob(FailedRaisesJob):
    """handle() raises; failed() then swallows every CancelledError for `seconds`."""
    timeout = 1

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 30.0

    async def failed(self, exception: BaseException) -> None:
        record(self.log, event="failed-start", job_id=self.job_id, t=time.time())
        until = time.monotonic() + self.seconds
        while time.monotonic() < until:
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass


class SlowFirstAttemptJob(SleepyJob):
    """Awaits `seconds` on its first attempt only (with `until`, a file's path: until it exists, at
    most `seconds`); later attempts end at once."""
    max_tries = 3
    timeout = 20

    def __init__(self) -> None:
        super().__init__()
        self.until = ""

    async def handle(self) -> None:
        record(self.log, event="start", job_id=self.job_id, attempts=self.attempts, t=time.time())
        if self.attempts == 1:
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline and not (self.until and os.path.exists(self.until)):
                await asyncio.sleep(min(0.05, self.seconds))
        record(self.log, event="end", job_id=self.job_id, attempts=self.attempts, t=time.time())


class StopsItsWorkerJob(Job):
    """Sends its own worker SIGTERM and returns at once: the stop arrives just after the job ended,
    when a worker at concurrency 1 may already have asked for the next job."""

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    async def handle(self) -> None:
        import signal

        record(self.log, event="handle", job_id=self.job_id, attempts=self.attempts)
        os.kill(os.getpid(), signal.SIGTERM)
