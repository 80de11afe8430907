"""WithoutOverlapping (SPEC 9): one job per key runs at a time, across all workers.

The lock's owner is this reservation (job id and token); it lasts a visibility timeout and is
renewed with the reservation by the worker's heartbeat, so a killed worker's lock lapses with its
reservation, never hours later. `expire_after` caps it instead (not renewed). It is freed when the
job's code ends, by its owner only; what a cut attempt leaves, the worker frees (release_locks).
"""
from __future__ import annotations

import logging
from typing import Any

from core.job import Job, intend
import core.queue.middleware.checks as checks
from core.queue.middleware.context import current_attempt

log = logging.getLogger("worker")
PREFIX = "overlap:"        # the lock store is shared with other features' locks (unique jobs)


class WithoutOverlapping:
    def __init__(self, key: str, release_after: float | None = 0, expire_after: float | None = None) -> None:
        self.key = checks.key("WithoutOverlapping", key)
        self.release_after = None if release_after is None else checks.seconds(
            "WithoutOverlapping", "release_after", release_after, zero=True)
        self.expire_after = None if expire_after is None else checks.seconds(
            "WithoutOverlapping", "expire_after", expire_after)

    def dont_release(self) -> "WithoutOverlapping":
        """While another job holds the key, skip this one (state skipped) instead of releasing it."""
        self.release_after = None
        return self

    async def __call__(self, job: Job, next: Any) -> Any:
        attempt = current_attempt()
        name = PREFIX + self.key
        ttl = self.expire_after if self.expire_after is not None else attempt.visibility_timeout
        if not await attempt.state.lock_acquire(name, attempt.owner, ttl):
            if self.release_after is None:
                intend(job, "delete", by="middleware")
            else:
                intend(job, "release", delay=self.release_after, by="middleware")
            return None
        lock = attempt.hold(name, renew=self.expire_after is None)
        try:
            return await next(job)
        finally:
            try:
                await attempt.free_lock(lock)
            except Exception as exc:  # noqa: BLE001  (the job's own outcome must not be replaced by an outage)
                log.warning("could not free lock %s: %s; the worker frees it when the attempt ends", name, exc)
