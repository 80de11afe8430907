"""RateLimited (SPEC 9): at most `allow` starts in any window of `every` seconds per key, across
all workers, counted in the queue's own store; over the limit the job is released (not a failed
try) until it may start, or with .dont_release() skipped."""
from __future__ import annotations

from typing import Any

from core.job import Job, intend
import core.queue.middleware.checks as checks
from core.queue.middleware.context import current_attempt


class RateLimited:
    def __init__(self, key: str, allow: int, every: float) -> None:
        self.key = checks.key("RateLimited", key)
        self.allow = checks.count("RateLimited", "allow", allow)
        self.every = checks.seconds("RateLimited", "every", every)
        self.releases = True

    def dont_release(self) -> "RateLimited":
        """Over the limit, skip the job (deleted, state skipped) instead of releasing it."""
        self.releases = False
        return self

    async def __call__(self, job: Job, next: Any) -> Any:
        wait = await current_attempt().state.limit_hit(self.key, self.allow, self.every)
        if wait <= 0:
            return await next(job)
        if self.releases:
            intend(job, "release", delay=wait, by="middleware")
        else:
            intend(job, "delete", by="middleware")
        return None
