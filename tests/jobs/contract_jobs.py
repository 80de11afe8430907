"""Jobs the contract suite dispatches. Each run appends "<job id> <attempt>" to the file in `path`."""
from __future__ import annotations

import asyncio
import os
import time

from core.job import Job


def append_line(path: str, line: str) -> None:
    """O_APPEND keeps lines whole when several worker processes write at once."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_runs(path: str) -> list[tuple[str, int]]:
    try:
        with open(path) as f:
            return [(parts[0], int(parts[1])) for parts in (line.split() for line in f) if parts]
    except FileNotFoundError:
        return []


class RecordRun(Job):
    queue = "contract"
    max_tries = 3
    timeout = 1

    def __init__(self) -> None:
        super().__init__()
        self.path = ""
        self.n = 0

    async def handle(self) -> None:
        append_line(self.path, f"{self.job_id} {self.attempts}")


class StallFirstAttempt(RecordRun):
    """Records its run, then on the first attempt hangs until the test kills the worker."""
    timeout = 60

    async def handle(self) -> None:
        await super().handle()
        if self.attempts == 1:
            await asyncio.sleep(60)


class RecordStartTime(RecordRun):
    """Records when it started (time.time()), to measure dispatch-to-start latency."""

    async def handle(self) -> None:
        append_line(self.path, f"{self.job_id} {self.attempts} {time.time():.6f}")
