"""What a reserved job may still do (SPEC 9): its tries, releases, retry deadline and expiry.

Tries used = attempts - releases: a release (the job's own, or a middleware's) never burns a try,
and a dead worker's attempt, never released, does. With `retry_until` the tries are not bounded by
max_tries but by the deadline (and `max_exceptions`, when set). The deadline and the expiry are
judged when the job is reserved, on the store's clock (`ReservedJob.now` against its `pushed_at`
and `due_at`), so the clocks of the dispatching and working hosts never meet.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.payload import Payload
from core.queue.contract import ReservedJob
from core.worker.outcome import Delete, Fail


class JobExpired(Exception):
    """The job was not started within its expires_after of being due; it was not run."""
    __module__ = "core.worker"    # the name failed_jobs records: where users import it from


class RetryDeadlinePassed(Exception):
    """The job was reserved past its retry_until; it was not run again."""
    __module__ = "core.worker"


class TooManyReleases(Exception):
    """The job was released more often than its max_releases allows; it was not run again."""
    __module__ = "core.worker"


@dataclass(slots=True)
class Tries:
    """The failed tries of one attempt: how many are used (this attempt included) and allowed."""
    used: int
    limit: int | None          # None: only retry_until bounds them

    @property
    def left(self) -> bool:
        """Whether a failure of this attempt may still be retried."""
        return self.limit is None or self.used < self.limit

    @property
    def over(self) -> bool:
        """This attempt is past the limit: an earlier one never finished (its worker died)."""
        return self.limit is not None and self.used > self.limit

    def describe(self, reserved: ReservedJob) -> str:
        """`attempt 3/3`, or with releases or a deadline `attempt 7 (try 2/3, 5 releases)`."""
        if reserved.releases == 0 and self.limit is not None:
            return f"attempt {reserved.attempts}/{self.limit}"
        limit = " until retry_until" if self.limit is None else f"/{self.limit}"
        return f"attempt {reserved.attempts} (try {self.used}{limit}, {reserved.releases} releases)"


def tries(reserved: ReservedJob, payload: Payload, max_tries: int) -> Tries:
    """With retry_until, max_exceptions bounds the failed tries (or nothing does); without it, max_tries,
    and max_exceptions too when it is lower (as Laravel's maxExceptions bounds tries)."""
    limit: int | None
    if payload.retry_until is not None:
        limit = payload.max_exceptions
    else:
        limit = max_tries if payload.max_exceptions is None else min(max_tries, payload.max_exceptions)
    return Tries(reserved.attempts - reserved.releases, limit)


def refusal(reserved: ReservedJob, payload: Payload) -> Fail | Delete | None:
    """Why this reservation must not run the job (an outcome without running it), else None.

    A job stored before the store kept push times (pushed_at 0) is judged by its releases only.
    """
    if payload.options and reserved.pushed_at > 0:     # expires_after and retry_until are options
        outcome = _expired(reserved, payload) or _past_deadline(reserved, payload)
        if outcome is not None:
            return outcome
    if reserved.releases > payload.max_releases:
        return Fail(TooManyReleases(f"{_name(payload)} was released {reserved.releases} times, over its "
                                    f"max_releases of {payload.max_releases}; it was not run again"))
    return None


def _expired(reserved: ReservedJob, payload: Payload) -> Fail | Delete | None:
    """Not started within expires_after of being due. Judged until the job's first failed try (a
    try means it started): a job held back by releases (a rate limit, a held lock) still expires."""
    limit = payload.expires_after
    if limit is None or reserved.attempts - reserved.releases > 1:
        return None
    late = reserved.now - reserved.due_at
    if late <= limit:
        return None
    if payload.expires_quietly:
        return Delete("expired")
    # A job released before (by itself from handle(), or by a middleware) may have run: not run *again*.
    ran = "it was not run" if reserved.attempts <= 1 else "it was not run again"
    return Fail(JobExpired(f"{_name(payload)} was not started within {limit:g}s of being due (reserved "
                           f"{late:.1f}s after); {ran}"))


def _past_deadline(reserved: ReservedJob, payload: Payload) -> Fail | None:
    """Measured from the moment the job was due (its push plus its delay), as expires_after is."""
    until = payload.retry_until
    if until is None or reserved.now <= reserved.due_at + until:
        return None
    return Fail(RetryDeadlinePassed(f"{_name(payload)} was reserved {reserved.now - reserved.due_at:.1f}s after "
                                    f"it was due, past its retry_until of {until:g}s; it was not run again"))


def _name(payload: Payload) -> str:
    return f"{payload.display_name} ({payload.uuid})"
