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
