"""The jobs our workers run in the benchmark (JOB_PACKAGES=bench.jobs lets the worker load them)."""
from __future__ import annotations

from bench.probe import record_latency, tick
from core.job import Job


class NoopJob(Job):
    """Does nothing but count itself (probe.tick), so the run's first start and last end are known."""

    async def handle(self) -> None:
        tick()


class ProbeJob(Job):
    """Reports how long after its dispatch its handler started."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0.0

    async def handle(self) -> None:
        record_latency(self.sent)


class SoakJob(Job):
    """Sleeps a little, then appends `job_id attempts pid` to a shared file (O_APPEND keeps lines whole)."""

    max_tries = 5
    timeout = 5

    def __init__(self) -> None:
        super().__init__()
        self.log = ""
        self.work = 0.01

    async def handle(self) -> None:
        import asyncio
        import os

        await asyncio.sleep(self.work)
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{self.job_id} {self.attempts} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


class StampJob(Job):
    """Returns the wall-clock time its handle() ended (bench/wait.py: how soon wait() sees it)."""

    keep_result = 60

    async def handle(self) -> float:
        import time

        return time.time()


class WakeStampJob(Job):
    """Appends how long after its dispatch its handler started (seconds) to the file `path`."""

    def __init__(self) -> None:
        super().__init__()
        self.path = ""
        self.sent = 0.0

    async def handle(self) -> None:
        import time

        with open(self.path, "a") as out:
            out.write(f"{time.time() - self.sent}\n")
