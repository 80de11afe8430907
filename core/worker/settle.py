"""Settling an attempt: the one place that turns its Outcome into store calls, and logs DONE/RETRY/FAIL.

Each outcome has one function here, and each ends where its state change is stored: what is
reported after that point (the log line, the SPEC 10 event) describes a state the store already
holds; a store call that failed or found the reservation lost reports no event.
A store call that fails is retried while the store is away (_store); one that gives up is safe,
since the job stays reserved and comes back after the visibility timeout.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from core.job import Job
from core.log import info, redact
from core.outage import OutageLog
from core.queue.contract import KeptResult, QueueConnection, ReservedJob
from core.queue.status import CANCEL_KEEP, completed_record, ended_record
from core.worker.announce import WorkerEvents
from core.worker.attempt import Attempt
from core.worker.outcome import Cancelled, Delete, Done, Fail, Outcome, Release, Retry, exception_text, first_line
from core.worker.timeouts import Timeouts

log = logging.getLogger("worker")
T = TypeVar("T")
SETTLE_TRIES = 8          # about 20 s of retries for acknowledge/release/fail


@dataclass(frozen=True)
class _Failure:
    """A failure on its way to failed_jobs: the text recorded and its first line for the log."""
    attempt: Attempt
    text: str
    summary: str
    exception: BaseException      # what this worker saw (a RecordedFailure when it finishes another's)


class Settler:
    """Stores the outcomes of one worker's attempts on its queue connection.

    Finished jobs wait in `_acks` until one task acknowledges them in a batch; the heartbeat keeps
    renewing them meanwhile, so `held_lock` (shared with the worker) guards those lists.
    """

    def __init__(self, conn: QueueConnection, outage: OutageLog, timeouts: Timeouts, held_lock: threading.Lock,
                 secrets: list[str], visibility_timeout: float, events: WorkerEvents | None = None) -> None:
        self.conn = conn
        self.events = events or WorkerEvents(conn.name, secrets)
        self.outage = outage
        self.timeouts = timeouts        # failed() runs under the job's timeout, like handle()
        self.secrets = secrets
        self.visibility_timeout = visibility_timeout
        self._held_lock = held_lock
        self._acks: list[Attempt] = []
        self._acking: list[Attempt] = []
        self._riding: list[Attempt] = []       # taken by the worker's reserve call (deferred)
        self._acker: asyncio.Task | None = None
        self._kept: dict[int, KeptResult] = {}     # by id(attempt): results to store with the acknowledgement
        # A worker at concurrency 1 whose store can acknowledge and reserve in one call sets this:
        # finished jobs then wait for the worker's next reserve to carry them (take/acknowledged),
        # instead of a round trip of their own. The worker flushes them whenever it will not reserve.
        self.deferred = False

    async def settle(self, attempt: Attempt, outcome: Outcome) -> None:
        if isinstance(outcome, (Retry, Release)) and await self._cancel_requested(attempt):
            outcome = Cancelled()           # (a Fail asks once its failing mark is stored: _fail)
        match outcome:
            case Done(result):
                self.done(attempt, result)
            case Retry(delay, exception):
                await self._retry(attempt, delay, exception)
            case Release(delay, reason):
                await self._release(attempt, delay, reason)
            case Fail(exception):
                await self._fail(attempt, exception)
            case Delete(reason):
                await self._delete(attempt, reason)
            case Cancelled():
                await self._cancelled(attempt)

    async def _cancel_requested(self, attempt: Attempt) -> bool:
        """Whether someone cancelled this job while it ran (SPEC 11), asked before it would be retried or
        released, and before failed() of a failure: the heartbeat reads cancel requests every few
        seconds, and an attempt that ends sooner would otherwise be run again, or failed with failed()
        called. (The request stays on the job, so one that comes after this answer cancels its next
        attempt.) Not for a failure another worker began: its failed() may have run."""
        if attempt.reserved.failing is not None:
            return False
        cancelled = await self._store(attempt.label, "read cancel requests",
                                      lambda: self.conn.extend([attempt.reserved]))
        return attempt.reserved.id in (cancelled or ())

    async def put_back(self, attempt: Attempt) -> None:
        """The worker's own task was cancelled mid-attempt: the job goes back on the queue at once."""
        await self._store(attempt.label, "release", lambda: self.conn.release(attempt.reserved, 0))

    def unacknowledged(self) -> list[ReservedJob]:
        """Finished jobs not acknowledged yet; call under `held_lock`."""
        return [attempt.reserved for attempt in (*self._riding, *self._acking, *self._acks)]

    async def drain(self) -> None:
        """Until every finished job's acknowledgement was sent (or given up)."""
        self.flush()
        while self._acker is not None:
            await asyncio.gather(self._acker, return_exceptions=True)

    # -- acknowledgements carried by the worker's next reserve (deferred) ---------------------

    def take(self) -> list[Attempt]:
        """The finished jobs waiting for an acknowledgement that no task is sending: the caller sends
        them (then `acknowledged`, or `give_back` if the call failed). They stay renewed meanwhile."""
        if self._acker is not None or not self._acks or self._riding:
            return []
        if self._kept:          # a result is stored with its acknowledgement (complete_many), not by a reserve
            self.flush()
            return []
        with self._held_lock:
            self._riding, self._acks = self._acks, []
        return self._riding

    def acknowledged(self, batch: list[Attempt], done: list[bool]) -> None:
        """The store answered the acknowledgements of a batch from `take`."""
        with self._held_lock:
            self._riding = []
        self._report_acks(batch, done)

    def give_back(self, batch: list[Attempt]) -> None:
        """The call that carried a batch from `take` failed: acknowledge it the usual way (retried)."""
        self.untake(batch)
        self.flush()

    def untake(self, batch: list[Attempt]) -> None:
        """A batch from `take` that was not sent after all: it waits for the next call again."""
        with self._held_lock:
            self._riding = []
            self._acks[:0] = batch

    def flush(self) -> None:
        """Send waiting acknowledgements now (the worker will not reserve soon)."""
        if self._acks and self._acker is None:
            self._acker = asyncio.create_task(self._acknowledge())

    # -- one function per outcome -----------------------------------------------------------

    def done(self, attempt: Attempt, result: object = None) -> None:
        """handle() returned: acknowledged in the next batch (or by the next reserve, deferred)."""
        payload = attempt.payload
        if payload is not None and payload.options and payload.keep_result:   # SPEC 11: stored with the ack
            record = completed_record(payload, attempt.reserved.attempts, result)
            self._kept[id(attempt)] = KeptResult(record, payload.keep_result)
        with self._held_lock:
            self._acks.append(attempt)
        if self._acker is None and not self.deferred:
            self._acker = asyncio.create_task(self._acknowledge())

    async def _retry(self, attempt: Attempt, delay: float, exc: Exception) -> None:
        error = redact(first_line(exc), self.secrets)
        held = await self._store(attempt.label, "release",
                                 lambda: self.conn.release_failed(attempt.reserved, delay, error))
        log.info("RETRY   %s %s (%s) retry in %gs%s", attempt.label, _took(attempt.started), first_line(exc), delay,
                 " [reservation lost]" if held is False else "")
        if held:
            self.events.released(attempt, delay, "exception", exc)

    async def _release(self, attempt: Attempt, delay: float, reason: str) -> None:
        # free: a release is not a failed try (SPEC 9); the release count goes up in the same step
        held = await self._store(attempt.label, "release",
                                 lambda: self.conn.release(attempt.reserved, delay, free=True))
        log.info("RELEASE %s %s (%s) again in %gs%s", attempt.label, _took(attempt.started), reason, delay,
                 " [reservation lost]" if held is False else "")
        if held:
            self.events.released(attempt, delay, reason)

    async def _delete(self, attempt: Attempt, reason: str) -> None:
        """Acknowledged without success (state skipped): reason "skipped" (delete(), Skip) or "expired".
        A job that keeps results keeps a `skipped` record, written with the acknowledgement."""
        payload = attempt.payload
        held: bool | None
        if payload is not None and payload.keep_result > 0:
            record = _ended("skipped", attempt, payload.keep_result)
            answers = await self._store(attempt.label, "delete",
                                        lambda: self.conn.complete_many([attempt.reserved], [record]))
            held = None if answers is None else bool(answers[0])
        else:
            held = await self._store(attempt.label, "delete", lambda: self.conn.acknowledge(attempt.reserved))
        if held is not None:
            log.info("SKIP    %s %s (%s)%s", attempt.label, _took(attempt.started), reason,
                     " [reservation lost]" if held is False else "")
        if held:
            self.events.deleted(attempt, reason)

    async def _cancelled(self, attempt: Attempt) -> None:
        """Cancelled while running: removed and recorded cancelled in one step; no retry, no failed()."""
        payload = attempt.payload
        keep = max(CANCEL_KEEP, payload.keep_result if payload is not None else 0.0)
        record = _ended("cancelled", attempt, keep)
        held = await self._store(attempt.label, "record as cancelled",
                                 lambda: self.conn.complete_many([attempt.reserved], [record]))
        log.info("CANCEL  %s %s%s", attempt.label, _took(attempt.started),
                 " [reservation lost]" if held is not None and not held[0] else "")

    async def _fail(self, attempt: Attempt, exc: BaseException) -> None:
        """The job's tries are over: mark it failing, call failed() once, then record it in failed_jobs.

        Each step is stored before the next, so a worker that takes the job over (this one died, or
        its reservation lapsed) finishes the failure from there: it never runs handle() again, calls
        failed() only if no one's returned, and records the first worker's exception.
        """
        reserved, job = attempt.reserved, attempt.job
        resumed = reserved.failing is not None
        failure = self._failure(attempt, exc)
        if not resumed and job is not None:
            if not await self._mark_failing(failure, False):
                return
            # Cancelled while it ran (SPEC 11): no failed(), no failed_jobs row. Asked after the mark, not
            # before: a store call in front of it left a worker cut off meanwhile with nothing stored,
            # and the next worker failed the job as a dead worker's instead of with its exception.
            if await self._cancel_requested(attempt):
                await self._cancelled(attempt)
                return
        if job is None or (resumed and reserved.failed_ran):     # failed() is not due
            await self._finish_failure(failure, False)
            return
        await self._call_failed(failure, job, exc)
        await self._finish_failure(failure, True)

    # -- the steps of a failure -------------------------------------------------------------

    async def _call_failed(self, failure: _Failure, job: Job, exc: BaseException) -> None:
        """failed() under the job's timeout; if it ignores cancellation, the failure is finished without it
        (and this call raises CancelledError)."""
        a = failure.attempt
        try:
            await self.timeouts.run_limited(lambda: job.run_failed(exc), a.timeout,
                                            f"{a.label}: failed() exceeded {a.timeout:g}s", a.label, a.slot,
                                            lambda _: self._finish_failure(failure, True))
        except Exception as failed_exc:
            log.error("%s: failed() raised %s; recording the job as failed anyway", a.label, first_line(failed_exc))

    def _failure(self, attempt: Attempt, exc: BaseException) -> _Failure:
        """What failed_jobs records: the first worker's exception when this one finishes its failure."""
        recorded = attempt.reserved.failing
        if recorded is not None:
            return _Failure(attempt, recorded, (recorded.splitlines() or [""])[0], exc)
        return _Failure(attempt, exception_text(exc, self.secrets), first_line(exc), exc)

    async def _finish_failure(self, failure: _Failure, failed_ran_now: bool) -> None:
        """failed() is over (or was not due): note that, then write the failed_jobs row and remove the job."""
        if failed_ran_now and not await self._mark_failing(failure, True):
            return
        attempt = failure.attempt
        recorded = await self._store(attempt.label, "record as failed",
                                     lambda: self.conn.fail(attempt.reserved, failure.text))
        if recorded is None:
            log.warning("%s: failed, but the failure could not be recorded; the worker that takes it after the "
                        "visibility timeout records it", attempt.label)
            return
        log.info("FAIL    %s %s (%s)%s", attempt.label, _took(attempt.started), failure.summary,
                 " [reservation lost; not recorded by this worker]" if recorded is False else "")
        if recorded:
            self.events.failed(attempt, failure.exception, (failure.text.splitlines() or [""])[0])

    async def _mark_failing(self, failure: _Failure, failed_ran: bool) -> bool:
        """Store how far the failure got; False (logged) when this worker must stop its part here."""
        attempt = failure.attempt
        held = await self._store(attempt.label, "mark as failing",
                                 lambda: self.conn.mark_failing(attempt.reserved, failure.text, failed_ran))
        if held is False:
            log.info("FAIL    %s %s (%s) [reservation lost; its failure is left to the worker that holds it]",
                     attempt.label, _took(attempt.started), failure.summary)
        elif held is None:
            log.warning("%s: failed, but that could not be stored; the worker that takes it after the visibility "
                        "timeout finishes the failure", attempt.label)
        return bool(held)

    # -- acknowledgements in batches --------------------------------------------------------

    async def _acknowledge(self) -> None:
        """Acknowledge finished jobs, all that are waiting in one round trip.

        A job's slot is free once its handle() returned; its acknowledgement goes out at once,
        with those of every job that finished while the previous batch was in flight. Until it
        is acknowledged the heartbeat keeps renewing its reservation, as for a running job.
        """
        try:
            while self._acks:
                with self._held_lock:
                    self._acking, self._acks = self._acks, []
                await self._acknowledge_batch(self._acking)
                with self._held_lock:
                    self._acking = []
        finally:
            self._acker = None

    async def _acknowledge_batch(self, batch: list[Attempt]) -> None:
        label = batch[0].label if len(batch) == 1 else f"{len(batch)} finished jobs"
        if self._kept:
            done = await self._store(label, "acknowledge", lambda: self._acknowledge_keeping(batch))
        else:
            done = await self._store(label, "acknowledge",
                                     lambda: self.conn.acknowledge_many([attempt.reserved for attempt in batch]))
        self._report_acks(batch, done)

    def _report_acks(self, batch: list[Attempt], done: list[bool] | None) -> None:
        for i, attempt in enumerate(batch):
            if done is None:
                log.warning("%s: handle() returned, but the acknowledgement could not be stored; it runs "
                            "again after the visibility timeout", attempt.label)
                continue
            if not done[i]:
                log.warning("%s finished, but its reservation had been taken over by another worker", attempt.label)
            info(log, f"DONE    {attempt.label} {_took(attempt.started)}")
            if done[i]:
                self.events.processed(attempt)

    async def _acknowledge_keeping(self, batch: list[Attempt]) -> list[bool]:
        """Jobs that keep a result go through complete_many (the record with the acknowledgement), the others
        as before; the answers in the order of `batch`."""
        kept = [i for i, attempt in enumerate(batch) if id(attempt) in self._kept]
        plain = [i for i, attempt in enumerate(batch) if id(attempt) not in self._kept]
        done = [False] * len(batch)
        if plain:
            for i, flag in zip(plain, await self.conn.acknowledge_many([batch[i].reserved for i in plain])):
                done[i] = flag
        if kept:
            answers = await self.conn.complete_many([batch[i].reserved for i in kept],
                                                    [self._kept[id(batch[i])] for i in kept])
            for i, flag in zip(kept, answers):
                done[i] = flag
                self._kept.pop(id(batch[i]), None)
        return done

    # -- retrying a store call --------------------------------------------------------------

    async def _store(self, label: str, action: str, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run one state change, retrying while the store is unreachable (a restart, a dropped connection).

        Returns the step's answer (False: the reservation was no longer ours), or None after giving
        up, which is safe: the job stays reserved and comes back after the visibility timeout.
        An unreachable store is waited for until the reservation may have lapsed (at least the
        SETTLE_TRIES window): an acknowledge that lands before then spares the job a second run.
        """
        delay = 0.2
        give_up = time.monotonic() + self.visibility_timeout
        for tried in itertools.count(1):
            try:
                return await step()
            except Exception as exc:
                outage = self.outage.failed(exc)
                if tried >= SETTLE_TRIES and not (outage and time.monotonic() + delay < give_up):
                    log.error("%s: could not %s (%s); it comes back after the visibility timeout", label,
                              action, redact(first_line(exc), self.secrets))
                    return None
                # During an outage (reported once) the per-job retries are detail.
                log.log(logging.DEBUG if outage else logging.WARNING,
                        "%s: could not %s (%s); retrying in %.1fs", label, action,
                        redact(first_line(exc), self.secrets), delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        return None  # not reached: itertools.count never ends


def _ended(state: str, attempt: Attempt, keep: float) -> KeptResult:
    """The record of a job ended without a result, and the state a store files it under: one value."""
    return KeptResult(ended_record(state, attempt.payload, attempt.reserved.attempts), keep, state)


def _took(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.1f}ms"
