"""The interfaces of a queue connection: QueueConnection, the narrow contract every connection
implements (all the worker and the dispatcher use), and QueueAdmin, the optional one for
inspecting and controlling a queue (sizes, clearing, the restart signal) that the commands check
for. The worker, the dispatcher and the commands never know which store is behind them."""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import NotSupported

if TYPE_CHECKING:
    from core.queue.failed import FailedJob, FailedJobStore
    from core.queue.status import JobStatus

from core.queue.state import LocalState, MiddlewareState


@dataclass(slots=True)
class ReservedJob:
    """A job a worker holds. `token` fences the reservation: once it is taken over, it no longer matches.

    Never changed once made, but not frozen: one is made per job reserved, and a frozen dataclass's
    __init__ (object.__setattr__ per field) costs three times a plain one's."""
    id: str
    queue: str
    payload: str
    attempts: int          # attempts so far, this one included
    token: str
    # Set when a worker already began failing this job (mark_failing): the exception text it
    # recorded then, and whether that worker's failed() had returned. A worker that reserves such a
    # job runs neither handle() nor (when failed_ran) failed() again: it finishes the failure.
    failing: str | None = None
    failed_ran: bool = False
    # SPEC 9: releases so far (tries used = attempts - releases), and three times on the store's
    # clock, so retry_until and expires_after are judged without the hosts' clocks: when the job was
    # pushed (or put back by queue:retry), when it came due (pushed_at + the dispatch's delay), and
    # when this reservation was made.
    releases: int = 0
    pushed_at: float = 0.0
    due_at: float = 0.0
    now: float = 0.0


@dataclass(frozen=True)
class QueueSize:
    pending: int = 0
    delayed: int = 0
    reserved: int = 0
    waiting: int = 0       # on other jobs (SPEC 13); no store holds such jobs yet

    def as_dict(self) -> dict[str, int]:
        return {"pending": self.pending, "delayed": self.delayed, "reserved": self.reserved}


@dataclass(frozen=True)
class KeptResult:
    """A finished job's record to store with its acknowledgement (SPEC 11): JSON, kept `keep` seconds;
    `state` is the record's own (completed, or cancelled or skipped), which a store may index."""
    record: str
    keep: float
    state: str = "completed"


class QueueConnection(ABC):
    """A store of queued jobs. Every method that changes state is one atomic operation.

    Required (abstract): push, reserve, acknowledge, release, fail and extend, a job's life; and
    mark_failing, which the worker cannot do without today: a worker that dies while failing a job
    must not leave it to run again (the next one finishes the failure). The worker also calls
    recover (a reserve whose answer was lost must not cost the job a try; the default, nothing to
    recover, suits a store that cannot lose that answer) and restart_signal (queue:restart; the
    default never changes). Everything else has a default built on these. Inspection and control
    are the optional QueueAdmin.
    """

    # The configured connection name ("database", "redis-high"), set by the QueueManager: what
    # failed_jobs.connection records and queue:retry opens again. The class value is the default.
    name: str = "abstract"
    # True for a connection that stores nothing and runs a pushed job at once, in the dispatching
    # process (sync): dispatch then runs the job object it holds instead of pushing a payload.
    runs_inline: bool = False
    # Group commit (core.dispatch): how many pushes of one queue concurrent dispatches put on the
    # wire at once; those that find them all busy wait and go together as one push of many when
    # one is answered. For a store where a push of many costs about what one push does (one script
    # call, one statement); its push_missing must not store a job twice, as a group is retried as
    # a whole. 0: no grouping, every dispatch pushes by itself.
    pushes_in_flight: int = 0
    # core.dispatch's record of them, per (queue, delay) (made at the first dispatch).
    pushing: "dict[tuple[str, float], Any] | None" = None

    async def open(self) -> None:
        """Connect and create what the store needs; raises ConnectionFailed with a clear message."""
        return None     # a hook: a store with nothing to open keeps this one

    async def close(self) -> None:
        """Release connections."""
        return None     # a hook: a store with nothing to release keeps this one

    def describe(self) -> str:
        """The store and its address for messages ("Redis at 127.0.0.1:6379"), never a password."""
        return self.name

    @property
    def state(self) -> MiddlewareState:
        """Job middleware state (SPEC 9) in this connection's store. Here: in this process only,
        for a connection with no shared store (sync); the database and Redis override it."""
        local = self.__dict__.get("_local_state")
        if local is None:
            local = self.__dict__["_local_state"] = LocalState()
        return local

    def connection_error(self, exc: BaseException) -> str | None:
        """A short reason ("Connection refused") when `exc` means the store could not be reached or
        the connection dropped, so the caller may retry; None for any other error."""
        return None

    @abstractmethod
    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        """Add a job, available after `delay` seconds."""

    async def push_many(self, queue: str, payloads: Sequence[str], delay: float = 0) -> None:
        """Add several jobs in one round trip where the store allows it."""
        for payload in payloads:
            await self.push(queue, payload, delay)

    async def push_missing(self, queue: str, payloads: Sequence[str], delay: float = 0) -> None:
        """Push again after a failure that may have stored the jobs all the same (the answer was
        lost): only those not stored yet. The default suits stores where a push of an id already
        stored is a no-op (Redis)."""
        await self.push_many(queue, payloads, delay)

    @abstractmethod
    async def reserve(self, queues: Sequence[str], claim: str | None = None) -> ReservedJob | None:
        """Take the oldest due job of the first queue that has one, counting the attempt; None if none.

        `claim` (random, from the caller) names this reservation: if its answer is lost (a dropped
        connection after the store acted), `recover(queues, claim)` hands the same jobs over
        without counting another attempt."""

    async def reserve_many(self, queues: Sequence[str], limit: int, claim: str | None = None) -> list[ReservedJob]:
        """Up to `limit` due jobs in queue-priority then FIFO order, in one round trip where the
        store allows it. A worker asks for as many as it has free slots, so none waits reserved."""
        job = await self.reserve(queues, claim)
        return [job] if job is not None else []

    async def reserve_wait(self, queues: Sequence[str], timeout: float,
                           interrupt: asyncio.Event | None = None, claim: str | None = None) -> ReservedJob | None:
        """Like reserve, but may wait up to `timeout` seconds for a job to arrive; a set
        `interrupt` (the worker stopping) ends the wait at once.

        Stores that can be woken (Redis) override this; the default just reserves once.
        """
        return await self.reserve(queues, claim)

    async def recover(self, queues: Sequence[str], claim: str) -> list[ReservedJob]:
        """The jobs a reserve call made with `claim` took and still holds, when its answer was
        lost; [] when it took none (or they were taken over since). No attempt is counted."""
        return []

    @abstractmethod
    async def acknowledge(self, job: ReservedJob) -> bool:
        """Delete a finished job. False if the reservation was no longer this worker's."""

    async def acknowledge_many(self, jobs: Sequence[ReservedJob]) -> list[bool]:
        """Delete several finished jobs in one round trip where the store allows it; one answer per
        job, as acknowledge gives. Each job's reservation is checked on its own."""
        return [await self.acknowledge(job) for job in jobs]

    async def complete_many(self, jobs: Sequence[ReservedJob], results: Sequence[KeptResult]) -> list[bool]:
        """acknowledge_many for jobs that keep a result: each job's record is stored in the same
        atomic step as its acknowledgement, and not at all when the reservation was lost. The
        default (a store that keeps no results) only acknowledges."""
        return await self.acknowledge_many(jobs)

    async def job_status(self, queue: str | None, job_id: str) -> "JobStatus | None":
        """SPEC 11: the job's state, read from the queue, then the results, then failed_jobs; None
        when none knows it. `queue` None: every queue is looked in (a store may need it)."""
        raise NotSupported(f"job status is not available on the {self.name} connection")

    async def cancel_job(self, queue: str | None, job_id: str) -> str:
        """SPEC 11: cancel a job; the state it is in afterwards ('cancelled'; 'reserved' when its
        worker was asked to cancel it; a final state, or 'unknown', when there was nothing to cancel)."""
        raise NotSupported(f"cancelling is not available on the {self.name} connection")

    async def cancelled_among(self, jobs: Sequence[ReservedJob]) -> list[str]:
        """The ids of held jobs someone asked to cancel (what extend() answers, on its own)."""
        return []

    async def set_progress(self, job: ReservedJob, fraction: float, text: str) -> bool:
        """Record a running job's progress (SPEC 11); False if the reservation was lost or the store keeps none."""
        return False

    async def await_change(self, queue: str | None, job_id: str, seconds: float) -> None:
        """wait(): until the job may have changed state, at most `seconds`. A store that can be
        woken (Redis) returns as soon as the job finished; the default sleeps."""
        await asyncio.sleep(seconds)

    @abstractmethod
    async def release(self, job: ReservedJob, delay: float = 0, *, free: bool = False) -> bool:
        """Put a job back to run again after `delay` seconds. False if the reservation was lost.
        `free`: a release that is not a failed try (SPEC 9): the job's release count goes up in
        the same atomic step, so tries used (attempts - releases) stay as they were."""

    async def release_failed(self, job: ReservedJob, delay: float, error: str) -> bool:
        """release() after a failed try, noting the exception's first line as the job's last_error
        (SPEC 11) in the same atomic step where the store can; the default only releases."""
        return await self.release(job, delay)

    @abstractmethod
    async def mark_failing(self, job: ReservedJob, exception: str, failed_ran: bool = False) -> bool:
        """Record, with the job, that its tries are over and why (before failed() runs, and again
        with failed_ran=True once it returned), and renew its reservation. A worker that reserves
        it later (this one died or gave up) finishes the failure instead of running it again.
        False if the reservation was no longer this worker's."""

    @abstractmethod
    async def fail(self, job: ReservedJob, exception: str) -> bool:
        """Write the job to failed_jobs and remove it from the queue, atomically where one store
        holds both; else the row first, then the delete. Either step may be repeated safely."""

    async def requeue(self, queue: str, payload: str, delay: float = 0, job_id: str | None = None) -> None:
        """queue:retry: put a failed job back under its own id with its attempts and releases reset
        and its push time restarted (retry_until, expires_after count from now), even if
        its id is still stored (a worker still failing it loses its reservation) or is remembered
        as finished. Unlike push, never a no-op. `delay`: seconds before it is due (queue:retry --delay).
        `job_id`: the id to keep for a payload with no readable uuid of its own (failed_jobs.uuid)."""
        await self.push(queue, payload, delay)

    async def requeue_failed(self, store: "FailedJobStore", job: "FailedJob", delay: float = 0) -> bool:
        """queue:retry of one failed job: back on its queue (requeue) and out of failed_jobs; False
        if its failed row was gone already (another retry took it). Requeued first, then
        forgotten: a crash in between leaves the failed row, never a lost job. Only the row read is
        forgotten: a worker may take the job back and fail it again in between, and that failure's
        row (written anew, FailedJobStore.record) is then the job's only record. A connection that
        shares the failed store's database does both in one transaction instead."""
        await self.requeue(job.queue, job.payload, delay, job_id=job.uuid)
        return await store.forget(job.uuid, row_id=job.row_id)

    @abstractmethod
    async def extend(self, jobs: Sequence[ReservedJob]) -> list[str] | None:
        """Renew the reservations of jobs still running, so they are not handed to another worker.
        A store that keeps cancel requests (SPEC 11) answers the ids of those jobs someone cancelled,
        learnt in the same call; None or []: none."""

    async def restart_signal(self) -> str:
        """The restart signal's current value ("" if never set). A worker reads it when it starts
        and stops once it differs: no clock is compared, so skewed hosts agree. Part of this
        contract because the worker reads it; a connection that cannot be signalled (no QueueAdmin
        to request_restart) keeps the default, a signal that never changes."""
        return ""


class QueueAdmin(ABC):
    """Optional: inspecting and controlling a connection's queues. A connection that keeps jobs
    implements it beside QueueConnection (and answers restart_signal with what request_restart
    changes); commands that need it ask `admin(conn, "queue:size")`."""

    @abstractmethod
    async def sizes(self, queues: Sequence[str] | None = None) -> dict[str, QueueSize]:
        """Counts per queue: the given queues, or every queue that has jobs."""

    @abstractmethod
    async def clear(self, queue: str) -> int:
        """Delete the jobs of a queue that are not reserved; returns how many."""

    async def jobs(self, queue: str | None, state: str | None, limit: int) -> "list[JobStatus]":
        """queue:jobs: at most `limit` jobs (of one state, one queue), at a cost bounded by `limit`."""
        raise NotSupported(f"queue:jobs is not available on the {getattr(self, 'name', 'this')} connection")

    async def prune_results(self) -> int:
        """queue:prune-results: delete the records whose time is up; how many."""
        return 0

    @abstractmethod
    async def request_restart(self) -> None:
        """queue:restart: change the restart signal, so every running worker finishes its jobs and exits."""


def admin(conn: QueueConnection, command: str) -> QueueAdmin:
    """`conn` as a QueueAdmin for `command`, or one clear line saying it has none."""
    if isinstance(conn, QueueAdmin):
        return conn
    keeps = "keeps no jobs (they run when dispatched)" if conn.runs_inline else "cannot be inspected"
    raise NotSupported(f"{command} is not available on the {conn.name} connection: it {keeps}")
