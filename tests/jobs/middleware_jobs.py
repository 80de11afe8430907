"""Middleware a payload may name (tests.jobs is a job package in the tests), and jobs that use them."""
from __future__ import annotations

from typing import Any

from core.job import Exponential, Job
from tests.jobs.sample_jobs import FlakyJob, record


class Tag:
    """Travels in a payload: records its label on the way in and out of the rest of the chain."""

    inits = 0

    def __init__(self, label: str, log: str = "", extra: Any = None) -> None:
        Tag.inits += 1
        self.label = label
        self.log = log
        self.extra = extra
        self._seen = []          # private: not sent, and not there after a restore

    async def __call__(self, job: Any, next: Any) -> Any:
        record(self.log, event=f"{self.label}>")
        result = await next(job)
        record(self.log, event=f"<{self.label}")
        return result

    def describe(self) -> str:
        return self.label


class SlottedTag:
    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    async def __call__(self, job: Any, next: Any) -> Any:
        return await next(job)


class SettingsJob(Job):
    """Every SPEC 9 setting away from its default."""

    retry_after = Exponential(first=5, factor=3, max=600, jitter=0.25)
    retry_until = 3600
    max_exceptions = 5
    max_releases = 7
    expires_after = 300
    expires_quietly = True
    dont_retry = (ValueError, KeyError)

    def __init__(self) -> None:
        super().__init__()
        self.log = ""

    def middleware(self) -> list:
        return [Tag("class", self.log)]

    async def handle(self) -> None:
        record(self.log, event="handle", job_id=self.job_id)


class NotMiddleware:
    """A class a payload may name, but with nothing to call."""

    label = ""


class BackoffJob(FlakyJob):
    """Fails until attempt `succeed_on`, retried after an exponential backoff."""

    retry_after = Exponential(first=40, factor=2, max=600)
