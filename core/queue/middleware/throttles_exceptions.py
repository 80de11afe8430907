"""ThrottlesExceptions (SPEC 9): a circuit breaker per job class, or per `.by(key)`.

Each exception passing through is a failed try (it goes on to the worker) and counts one
consecutive failure; from `max_exceptions` on, the circuit opens for `decay` seconds and jobs are
released without running (releases, not tries) until it closes; a success closes it. `backoff`:
seconds before a failed try runs again (else the job's retry_after). The job failing itself
(self.fail()) counts as a failure; releasing itself counts as neither.
"""
from __future__ import annotations

import logging
from typing import Any

from core.job import Job, intend, intent_of
import core.queue.middleware.checks as checks
from core.queue.middleware.context import current_attempt

log = logging.getLogger("worker")


class ThrottlesExceptions:
    def __init__(self, max_exceptions: int = 10, decay: float = 600, backoff: float = 0) -> None:
        self.max_exceptions = checks.count("ThrottlesExceptions", "max_exceptions", max_exceptions)
        self.decay = checks.seconds("ThrottlesExceptions", "decay", decay)
        self.backoff = checks.seconds("ThrottlesExceptions", "backoff", backoff, zero=True)
        self.key: str | None = None

    def by(self, key: str) -> "ThrottlesExceptions":
        """One circuit for every job using this key, instead of one per job class."""
        self.key = checks.key("ThrottlesExceptions.by", key)
        return self

    async def __call__(self, job: Job, next: Any) -> Any:
        state, key = current_attempt().state, self.key or type(job).class_path()
        open_for = await state.throttle_open_for(key)
        if open_for > 0:
            intend(job, "release", delay=open_for, by="middleware")
            return None
        try:
            result = await next(job)
        except Exception as exc:
            await self._failed(key, job, exc)
            raise
        intent = intent_of(job)
        if intent is not None and intent.kind == "fail":
            await self._count(key)
        elif intent is None or intent.kind == "delete":
            await state.throttle_success(key)
        return result

    async def _failed(self, key: str, job: Job, exc: Exception) -> None:
        await self._count(key)
        recorded = intent_of(job)
        if self.backoff and (recorded is None or recorded.kind == "retry"):
            intend(job, "retry", delay=self.backoff, exception=exc, by="middleware")

    async def _count(self, key: str) -> None:
        try:
            await current_attempt().state.throttle_failure(key, self.max_exceptions, self.decay)
        except Exception as exc:  # noqa: BLE001  (the job's own exception must reach the worker, not this one)
            log.warning("could not count a failure of circuit %s: %s", key, exc)
