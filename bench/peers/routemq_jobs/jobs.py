"""The benchmark's jobs for RouteMQ, registered for its deserialization allow-list (@Job.register)."""
from __future__ import annotations

from routemq.job import Job

from bench.probe import record_latency, tick


@Job.register
class NoopJob(Job):
    async def handle(self) -> None:
        tick()


@Job.register
class ProbeJob(Job):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0.0

    async def handle(self) -> None:
        record_latency(self.sent)
