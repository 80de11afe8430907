"""The worker: takes jobs from a queue connection, runs them with timeouts, retries and fails them."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import itertools
import logging
import math
import os
import pkgutil
import resource
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from secrets import token_hex
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from core.errors import ConfigError
from core.heartbeat import Heartbeat
from core.job import Job, resolve_job_class, validate_queue_name
from core.log import one_line, redact
from core.outage import OutageLog
from core.payload import Payload
from core.queue.contract import QueueConnection, ReservedJob
from core.watchdog import CANCEL_GRACE, EXIT_BLOCKED, JobTimeoutError, LeftBehind, Watchdog, run_guarded

if TYPE_CHECKING:
    from core.app import Application

log = logging.getLogger("worker")
T = TypeVar("T")
SETTLE_TRIES = 8          # about 20 s of retries for acknowledge/release/fail
LEFT_BEHIND_LIMIT = 3     # job tasks ignoring cancellation at once before the worker stops to be replaced
HEARTBEAT_MAX = 2.0       # seconds between renewals at most: one store call per queue connection
RENEWAL_ALLOWANCE = 0.5   # seconds for the renewal's round trip and its thread getting to run, on a loaded host
KEPT_CLAIMS = 32          # reserve calls whose answers were lost, kept for recover() once the store is back


class MaxAttemptsExceededError(Exception):
    """A job came back after its last attempt never finished (its worker died or was killed,
    or the answer of the reserve that counted it was lost)."""


class RecordedFailure(Exception):
    """The exception a worker recorded when it began failing the job (mark_failing) and could not finish.

    str() is its first line; `text` the whole record: class, message and traceback."""

    def __init__(self, text: str) -> None:
        super().__init__((text.splitlines() or [""])[0])
        self.text = text


class JobInterrupted(Exception):
    """The worker was told to stop at once (a SIGINT after a stop signal) while the job ran."""


class _Guarded(NamedTuple):
    """Job code running under its deadline, and how its attempt ends if the code ignores cancellation."""
    task: asyncio.Task
    slot: int                                                  # the job's key in Worker._running
    instead: Callable[[Exception], Awaitable[None]]            # ends the attempt without the code
    label: str
    message: str                                               # what a timeout says


@dataclass(frozen=True)
class WorkerOptions:
    connection: str | None = None
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 1
    sleep: float = 1.0            # idle wait between empty polls (Redis wakes at once instead)
    tries: int | None = None      # override the payload's max_tries
    timeout: float | None = None  # override the payload's timeout
    max_jobs: int = 0             # stop after this many jobs (0: no limit)
    max_time: float = 0           # stop after this many seconds (0: no limit)
    memory: int = 0               # stop when resident memory passes this many MB (0: no limit; the CLI: 128)
    stop_when_empty: bool = False
    once: bool = False


def exception_text(exc: BaseException, secrets: list[str]) -> str:
    """What failed_jobs.exception holds: `Class: message` on the first line, then the traceback."""
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    message = str(exc).strip()
    trace = "".join(traceback.format_exception(exc))
    return redact(f"{name}: {message}\n\n{trace}" if message else f"{name}\n\n{trace}", secrets)


def heartbeat_interval(visibility_timeout: float) -> float:
    """Seconds between renewals of the running jobs' reservations."""
    return min(visibility_timeout / 4, HEARTBEAT_MAX)


def max_blocking_timeout(visibility_timeout: float, watchdog: Watchdog) -> float:
    """The longest timeout a job may have and hold the interpreter for, without another job's reservation lapsing.

    The heartbeat's own thread renews while job code blocks the event loop; only code holding the
    GIL (C code) stops it. The worst case: a renewal was just due when the job began blocking (h),
    the job blocks its whole timeout and the watchdog's overrun past it, then the renewal still has
    to reach the store.
    """
    margin = watchdog.overrun + RENEWAL_ALLOWANCE
    return round(visibility_timeout - heartbeat_interval(visibility_timeout) - margin, 2)


def memory_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Worker:
    def __init__(self, app: "Application", options: WorkerOptions) -> None:
        self.app = app
        self.options = options
        self.visibility_timeout = app.config.queue.visibility_timeout
        self.key = app.config.app.key
        self.max_payload = app.config.queue.max_payload_bytes
        self.packages = app.config.app.job_packages
        self.secrets = app.config.secrets()
        self.processed = 0
        self.stop_reason = ""
        # The jobs held, read by the heartbeat's thread: _running, _acks and _acking change under _held_lock.
        self._held_lock = threading.Lock()
        self._running: dict[int, ReservedJob] = {}
        self._tasks: set[asyncio.Task] = set()
        # Finished jobs waiting for their acknowledgement, sent in batches by one task (_acknowledge).
        self._acks: list[tuple[ReservedJob, str, float]] = []
        self._acking: list[tuple[ReservedJob, str, float]] = []
        self._acker: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()     # a running job finished, or stop() was called
        self._next_memory_check = 0.0
        self._keys = itertools.count(1)
        self._warned: set[str] = set()
        self._classes: dict[str, type[Job]] = {}    # class paths already checked and imported
        self._outage: OutageLog       # set by run(), once the connection is open
        self.watchdog = Watchdog(on_overdue=self._overdue)
        self.left_behind = LeftBehind()
        self.exit_code = 0
        self._guarded: dict[int, _Guarded] = {}     # job code running now, by watch key
        self._signalled = False
        self._interrupted = False
        self._lost_claims: deque[tuple[str, float]] = deque(maxlen=KEPT_CLAIMS)   # (claim, when it was lost)
        self.max_timeout = max_blocking_timeout(self.visibility_timeout, self.watchdog)
        for queue in options.queues:
            validate_queue_name(queue)
        if options.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        self._check_tries_and_timeout()

    def _check_tries_and_timeout(self) -> None:
        tries, timeout = self.options.tries, self.options.timeout
        if tries is not None and tries < 1:
            raise ConfigError(f"--tries {tries} must be at least 1 (the first run counts as a try)")
        if timeout is None:
            return
        if not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"--timeout {timeout:g} must be a number of seconds above 0")
        if timeout > self.max_timeout:
            raise ConfigError(
                f"--timeout {timeout:g} is too close to QUEUE_VISIBILITY_TIMEOUT ({self.visibility_timeout}s): "
                f"at most {max(self.max_timeout, 0):g}s, or a job blocking the event loop that long lets another "
                f"running job's reservation lapse and a second worker run it")

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        if self._stopping.is_set():
            log.info("Already stopping; waiting for %d running job(s) to finish", len(self._running))
            return
        self.stop_reason = reason
        self._changed.set()
        hint = " (a SIGINT now releases them at once)" if reason in ("SIGINT", "SIGTERM") and self._running else ""
        log.info("Stopping (%s): no new jobs; waiting for %d running job(s)%s", reason, len(self._running), hint)
        self._stopping.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        """SIGINT or SIGTERM stops gracefully; a SIGINT after that (Ctrl-C twice) cuts running jobs short.

        A repeated SIGTERM does not: process managers mean a graceful stop however often they send
        it, and the kernel's parent-death signal arrives again as each thread of a dying supervisor exits.
        """
        if self._signalled and sig == signal.SIGINT:
            if not self._interrupted:
                self._interrupt(sig)
            return
        self._signalled = True
        self.stop(sig.name)

    def _interrupt(self, sig: signal.Signals) -> None:
        """Cancel running job code so its jobs go back on the queue at once (JobInterrupted)."""
        self._interrupted = True
        self.exit_code = self.exit_code or 128 + sig
        log.warning("%s while stopping: cancelling %d running job(s) and releasing them to the queue now", sig.name,
                    len(self._running))
        for guarded in self._guarded.values():
            guarded.task.cancel()
        asyncio.get_running_loop().call_later(CANCEL_GRACE, self._take_over_interrupted)

    async def run(self) -> int:
        conn = await self.app.queue.connection(self.options.connection)
        self._outage = OutageLog(log, conn, self.secrets)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._warn_long_timeouts()
        self.watchdog.start()
        started = time.monotonic()
        heartbeat = Heartbeat(self.app, self.options.connection, heartbeat_interval(self.visibility_timeout),
                              self._held, self._outage, self.secrets)
        heartbeat.start()
        log.info("Worker started: connection %s, queues %s, concurrency %d (pid %d)", conn.name,
                 ",".join(self.options.queues), self.options.concurrency, os.getpid())
        try:
            await self._loop(conn, started, await self._restart_signal(conn))
            await self._release_lost_claims(conn)
            while self._tasks:   # re-read: an attempt taken over from left-behind code goes on in a new task
                await asyncio.wait(list(self._tasks), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            while self._acker is not None:
                await asyncio.gather(self._acker, return_exceptions=True)
            await self._close_left_behind()
        finally:
            await heartbeat.stop()      # after the last acknowledgement: it renews jobs waiting for theirs
            self.watchdog.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("Worker stopped (%s) after %d attempt(s)", self.stop_reason or "done", self.processed)
        return self.exit_code

    async def _restart_signal(self, conn: QueueConnection) -> str | None:
        """The restart signal as this worker starts; None if the store cannot say now (read later)."""
        try:
            return await conn.restart_signal()
        except Exception as exc:  # the loop reports the store's trouble
            log.debug("restart signal not read: %s", exc)
            return None

    async def _loop(self, conn: QueueConnection, started: float, restart: str | None) -> None:
        o = self.options
        backoff = 0.0
        next_restart_check = 0.0
        while not self._stopping.is_set():
            if o.max_time and time.monotonic() - started >= o.max_time:
                self.stop(f"--max-time {o.max_time:g}s reached")
                break
            if time.monotonic() >= next_restart_check:
                next_restart_check = time.monotonic() + 1.0
                try:
                    signal_now = await conn.restart_signal()
                    if restart is None:     # unread at start: the first answer is the baseline
                        restart = signal_now
                    elif signal_now != restart:
                        self.stop("queue:restart")
                        break
                except Exception as exc:  # the reserve below reports other trouble
                    log.debug("restart check failed: %s", exc)
                    if self._outage.failed(exc):   # no point reserving from a store that is away
                        backoff = min(10.0, backoff * 2 or 0.5)
                        await self._idle(backoff)
                        continue
            if self._lost_claims:
                try:
                    await self._recover(conn)
                except Exception as exc:
                    backoff = min(10.0, backoff * 2 or 0.5)
                    self._report_reserve_error(exc, backoff)
                    await self._idle(backoff)
                    continue
            free = o.concurrency - len(self._running)
            if o.max_jobs:
                free = min(free, o.max_jobs - self.processed - len(self._running))
            if free <= 0:
                await self._wait_for_change()
                continue
            claim = ""
            try:
                polled_at = time.monotonic()
                # Busy: as many jobs as there are free slots in one round trip. Idle: block for one.
                # Each call names its reservation (claim): if its answer is lost, recover() finds it.
                if free > 1 and not o.once:
                    claim = token_hex(8)
                    jobs = await conn.reserve_many(o.queues, free, claim=claim)
                else:
                    jobs = []
                if not jobs:
                    # --stop-when-empty asks about now: no point blocking for a job to arrive.
                    claim = token_hex(8)
                    job = await conn.reserve_wait(o.queues, 0 if o.stop_when_empty else o.sleep, self._stopping,
                                                  claim=claim)
                    jobs = [job] if job is not None else []
                backoff = 0.0
                self._outage.recovered()
            except Exception as exc:
                backoff = min(10.0, backoff * 2 or 0.5)
                self._report_reserve_error(exc, backoff)
                # The store may have acted before the call failed (its answer lost): keep the claim to ask.
                self._lost_claims.append((claim, time.monotonic()))
                await self._idle(backoff)
                continue
            if jobs and time.monotonic() - polled_at > heartbeat_interval(self.visibility_timeout):
                jobs = await self._still_held(conn, jobs, claim)
            if not jobs:
                if o.once or (o.stop_when_empty and not self._running):
                    self.stop("queue empty" if o.stop_when_empty else "--once")
                    break
                if o.stop_when_empty:
                    await self._wait_for_change()  # a running job may release a retry
                else:
                    # A store that blocked in reserve_wait (Redis) has already waited its --sleep.
                    await self._idle(o.sleep - (time.monotonic() - polled_at))
                continue
            for job in jobs:
                self._start(conn, job)
            if o.once:
                self.stop("--once")
                break
            if o.max_jobs and self.processed + len(self._running) >= o.max_jobs:
                self.stop(f"--max-jobs {o.max_jobs} reached")
                break

    def _report_reserve_error(self, exc: Exception, backoff: float) -> None:
        """An outage is one line; anything else, each time."""
        if not self._outage.failed(exc):
            log.error("Queue connection error: %s; retrying in %.1fs",
                      redact(str(exc) or type(exc).__name__, self.secrets), backoff)

    async def _still_held(self, conn: QueueConnection, jobs: list[ReservedJob], claim: str) -> list[ReservedJob]:
        """The jobs of a reserve answer read late that are still this worker's, renewed.

        The store reserved them when the call ran, but the answer may have waited unread (job code
        blocking the loop) longer than the heartbeat lets a running job go unrenewed: a lapsed
        reservation may have been taken again, and starting the job here would run it twice.
        Renew what is still ours (token-checked), then ask the store which the call still holds. A
        job still ours that the store can no longer name (read later than it keeps claims) goes
        back to the queue now rather than after its reservation lapses.
        """
        try:
            await conn.extend(jobs)
            held = await conn.recover(self.options.queues, claim)
            kept = {(job.queue, job.id) for job in held}
            for job in jobs:
                if (job.queue, job.id) not in kept:
                    released = await conn.release(job, 0)
                    log.warning("%s on %s: its reservation lapsed before the worker read it (the event loop was "
                                "blocked); not started, %s", one_line(job.id), job.queue,
                                "released to the queue" if released else "it is another reservation's now")
        except Exception as exc:
            self._report_reserve_error(exc, 0.0)
            self._lost_claims.append((claim, time.monotonic()))   # recovered once the store answers
            return []
        return held

    async def _recover(self, conn: QueueConnection) -> None:
        """Start the jobs that reserve calls whose answers were lost took: their attempts are counted.

        A claim older than the visibility timeout is dropped: its jobs (if any) have lapsed.
        """
        while self._lost_claims:
            claim, lost_at = self._lost_claims[0]
            if time.monotonic() - lost_at < self.visibility_timeout:
                for job in await conn.recover(self.options.queues, claim):
                    log.warning("%s on %s: its reservation's answer was lost; recovered and started",
                                one_line(job.id), job.queue)
                    self._start(conn, job)
            self._lost_claims.popleft()
        self._outage.recovered()

    async def _release_lost_claims(self, conn: QueueConnection) -> None:
        """Stopping: jobs that lost answers reserved go back on the queue now, rather than after the visibility timeout."""
        if self._outage.active:     # the store is still away: the jobs come back after the visibility timeout
            return
        for claim, lost_at in list(self._lost_claims):
            if time.monotonic() - lost_at >= self.visibility_timeout:
                continue
            try:
                for job in await conn.recover(self.options.queues, claim):
                    await conn.release(job, 0)
            except Exception as exc:
                log.debug("could not recover claim %s while stopping: %s", claim, exc)
                return
        self._lost_claims.clear()

    def _start(self, conn: QueueConnection, job: ReservedJob) -> None:
        key = next(self._keys)
        with self._held_lock:
            self._running[key] = job
        self._track(key, asyncio.create_task(self._process(conn, key, job)))

    def _track(self, key: int, task: asyncio.Task) -> None:
        """The job's slot is busy until `task` ends, or until the task is left behind and replaced."""
        self._tasks.add(task)

        def finished(t: asyncio.Task) -> None:
            if t not in self._tasks:    # left behind: the task that took over its attempt frees the slot
                return
            self._tasks.discard(t)
            with self._held_lock:
                self._running.pop(key, None)
            self.processed += 1
            self._changed.set()
            self._check_memory()

        task.add_done_callback(finished)

    def _check_memory(self) -> None:
        """Between jobs, at most once a second: reading /proc per job costs more than a no-op job."""
        now = time.monotonic()
        if not self.options.memory or now < self._next_memory_check:
            return
        self._next_memory_check = now + 1.0
        used = memory_mb()
        if used > self.options.memory:
            self.stop(f"memory {used:.0f}MB over --memory {self.options.memory}MB")

    async def _wait_for_change(self) -> None:
        """Until a running job finishes or the worker is told to stop."""
        self._changed.clear()
        await self._changed.wait()

    async def _idle(self, seconds: float) -> None:
        if seconds > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()

    def _held(self) -> list[ReservedJob]:
        """The heartbeat's thread: the jobs running and those waiting for their acknowledgement."""
        with self._held_lock:
            return [*self._running.values(), *(job for job, _, _ in self._acking), *(job for job, _, _ in self._acks)]

    # -- one job ---------------------------------------------------------------------------

    async def _process(self, conn: QueueConnection, key: int, reserved: ReservedJob) -> None:
        started = time.monotonic()
        try:
            payload = Payload.decode(reserved.payload, self.key, self.max_payload)
            cls = self._classes.get(payload.job) or self._resolve(payload.job)
            job = cls.from_payload(payload, reserved.attempts)
        except Exception as exc:  # InvalidPayload, or a job class whose __init__ raises
            label = f"job {one_line(reserved.id)} on {reserved.queue}"
            await self._bury(conn, key, reserved, None, exc, label, started, 0)
            return
        label = f"{payload.display_name} [{payload.uuid}]"
        max_tries = payload.max_tries if self.options.tries is None else self.options.tries
        timeout = payload.timeout if self.options.timeout is None else self.options.timeout
        self._warn_timeout(payload.job, timeout)
        if reserved.failing is not None:     # a worker began failing it: finish that, never run it again
            await self._bury(conn, key, reserved, job, RecordedFailure(reserved.failing), label, started, timeout)
            return
        if reserved.attempts > max_tries:
            exc = MaxAttemptsExceededError(
                f"{payload.display_name} ({payload.uuid}) reached attempt {reserved.attempts} of {max_tries}: "
                f"its last attempt never finished (a worker died or was stopped while running it, or the "
                f"reservation never reached a worker); it was not run again")
            await self._bury(conn, key, reserved, job, exc, label, started, timeout)
            return
        log.info("RUNNING %s attempt %d/%d", label, reserved.attempts, max_tries)
        failed_attempt = functools.partial(self._failed_attempt, conn, key, reserved, payload, job, label, started,
                                           max_tries, timeout)
        try:
            await self._run_limited(key, job.run_handle, timeout, f"{label} exceeded its timeout of {timeout:g}s",
                                    label, key, failed_attempt)
        except asyncio.CancelledError:
            if asyncio.current_task() in self._tasks:   # not left behind: the job is still ours to release
                await self._settle(label, "release", lambda: conn.release(reserved, 0))
            raise
        except Exception as exc:
            await failed_attempt(exc)
            return
        with self._held_lock:
            self._acks.append((reserved, label, started))
        if self._acker is None:
            self._acker = asyncio.create_task(self._acknowledge(conn))

    async def _acknowledge(self, conn: QueueConnection) -> None:
        """Acknowledge finished jobs, all that are waiting in one round trip.

        A job's slot is free once its handle() returned; its acknowledgement goes out at once,
        with those of every job that finished while the previous batch was in flight. Until it
        is acknowledged the heartbeat keeps renewing its reservation, as for a running job.
        """
        try:
            while self._acks:
                with self._held_lock:
                    self._acking, self._acks = self._acks, []
                batch = self._acking
                label = batch[0][1] if len(batch) == 1 else f"{len(batch)} finished jobs"
                done = await self._settle(label, "acknowledge", lambda: conn.acknowledge_many([j for j, _, _ in batch]))
                for i, (_, job_label, started) in enumerate(batch):
                    if done is None:
                        log.warning("%s: handle() returned, but the acknowledgement could not be stored; it runs "
                                    "again after the visibility timeout", job_label)
                        continue
                    if not done[i]:
                        log.warning("%s finished, but its reservation had been taken over by another worker", job_label)
                    log.info("DONE    %s %s", job_label, _took(started))
                with self._held_lock:
                    self._acking = []
        finally:
            self._acker = None

    def _resolve(self, path: str) -> type[Job]:
        cls = resolve_job_class(path, self.packages)
        self._classes[path] = cls
        return cls

    async def _failed_attempt(self, conn: QueueConnection, key: int, reserved: ReservedJob, payload: Payload, job: Job,
                              label: str, started: float, max_tries: int, timeout: float, exc: Exception) -> None:
        """An attempt raised, timed out or was interrupted: release the job for a retry, or bury it."""
        if isinstance(exc, JobInterrupted):     # cut short by Ctrl-C twice: back on the queue at once
            delay: float = 0
        elif reserved.attempts < max_tries:
            delay = payload.retry_delay(reserved.attempts)
        else:
            await self._bury(conn, key, reserved, job, exc, label, started, timeout)
            return
        held = await self._settle(label, "release", lambda: conn.release(reserved, delay))
        log.info("RETRY   %s %s (%s) retry in %gs%s", label, _took(started), _first_line(exc), delay,
                 " [reservation lost]" if held is False else "")

    async def _settle(self, label: str, action: str, step: Callable[[], Awaitable[T]]) -> T | None:
        """Run one state change, retrying while the store is unreachable (a restart, a dropped connection).

        Returns the step's answer (False: the reservation was no longer ours), or None after giving
        up, which is safe: the job stays reserved and comes back after the visibility timeout.
        An unreachable store is waited for until the reservation may have lapsed (at least the
        SETTLE_TRIES window): an acknowledge that lands before then spares the job a second run.
        """
        delay = 0.2
        give_up = time.monotonic() + self.visibility_timeout
        for attempt in itertools.count(1):
            try:
                return await step()
            except Exception as exc:
                outage = self._outage.failed(exc)
                if attempt >= SETTLE_TRIES and not (outage and time.monotonic() + delay < give_up):
                    log.error("%s: could not %s (%s); it comes back after the visibility timeout", label,
                              action, redact(_first_line(exc), self.secrets))
                    return None
                # During an outage (reported once) the per-job retries are detail.
                log.log(logging.DEBUG if outage else logging.WARNING,
                        "%s: could not %s (%s); retrying in %.1fs", label, action,
                        redact(_first_line(exc), self.secrets), delay)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        return None  # not reached: itertools.count never ends

    async def _run_limited(self, key: int, fn: Callable[[], Awaitable[object]], timeout: float, message: str,
                           label: str, slot: int, instead: Callable[[Exception], Awaitable[None]]) -> None:
        """Run job code for at most `timeout` seconds, whether it awaits, blocks the loop or ignores cancellation.

        Code still running CANCEL_GRACE past its deadline is left behind (_overdue): `instead` ends
        its attempt in a task of its own, and this call, if it ever returns, raises CancelledError.
        """
        self._guarded[key] = _Guarded(asyncio.current_task(), slot, instead, label, message)  # type: ignore[arg-type]
        self.watchdog.watch(key, timeout, message)
        try:
            async with asyncio.timeout(timeout) as scope:
                await run_guarded(key, fn)
        except TimeoutError as exc:
            if scope.expired() and not isinstance(exc, JobTimeoutError):
                raise JobTimeoutError(message) from None
            raise
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise JobInterrupted("the worker was stopped at once by a second SIGINT") from None
        finally:
            self.watchdog.unwatch(key)
            if self._guarded.pop(key, None) is None:
                raise asyncio.CancelledError   # left behind: another task ended its attempt; nothing more to do

    async def _bury(self, conn: QueueConnection, key: int, reserved: ReservedJob, job: Job | None,
                    exc: BaseException, label: str, started: float, timeout: float) -> None:
        """The job's tries are over: mark it failing, call failed() once, then record it in failed_jobs.

        Each step is stored before the next, so a worker that takes the job over (this one died, or
        its reservation lapsed) finishes the failure from there: it never runs handle() again, calls
        failed() only if no one's returned, and records the first worker's exception.
        """
        text = reserved.failing if reserved.failing is not None else exception_text(exc, self.secrets)
        summary = (text.splitlines() or [""])[0] if reserved.failing is not None else _first_line(exc)
        failed_ran = job is None or (reserved.failing is not None and reserved.failed_ran)
        if reserved.failing is None and job is not None \
                and not await self._mark_failing(conn, reserved, text, False, label, started, summary):
            return
        finish = functools.partial(self._finish_failure, conn, reserved, text, not failed_ran, label, started, summary)
        if not failed_ran:
            try:
                await self._run_limited(next(self._keys), lambda: job.run_failed(exc), timeout,  # type: ignore[union-attr]
                                        f"{label}: failed() exceeded {timeout:g}s", label, key, lambda _: finish())
            except Exception as failed_exc:
                log.error("%s: failed() raised %s; recording the job as failed anyway", label,
                          _first_line(failed_exc))
        await finish()

    async def _finish_failure(self, conn: QueueConnection, reserved: ReservedJob, text: str, failed_ran_now: bool,
                              label: str, started: float, summary: str) -> None:
        """failed() is over (or was not due): note that, then write the failed_jobs row and remove the job."""
        if failed_ran_now and not await self._mark_failing(conn, reserved, text, True, label, started, summary):
            return
        recorded = await self._settle(label, "record as failed", lambda: conn.fail(reserved, text))
        if recorded is None:
            log.warning("%s: failed, but the failure could not be recorded; the worker that takes it after the "
                        "visibility timeout records it", label)
            return
        log.info("FAIL    %s %s (%s)%s", label, _took(started), summary,
                 " [reservation lost; not recorded by this worker]" if recorded is False else "")

    async def _mark_failing(self, conn: QueueConnection, reserved: ReservedJob, text: str, failed_ran: bool,
                            label: str, started: float, summary: str) -> bool:
        """Store how far the failure got; False (logged) when this worker must stop its part here."""
        held = await self._settle(label, "mark as failing", lambda: conn.mark_failing(reserved, text, failed_ran))
        if held is False:
            log.info("FAIL    %s %s (%s) [reservation lost; its failure is left to the worker that holds it]",
                     label, _took(started), summary)
        elif held is None:
            log.warning("%s: failed, but that could not be stored; the worker that takes it after the visibility "
                        "timeout finishes the failure", label)
        return bool(held)

    # -- job code that ignores cancellation ------------------------------------------------

    def _overdue(self, key: int) -> None:
        """Called by the watchdog: job code still runs CANCEL_GRACE past its deadline."""
        guarded = self._guarded.get(key)
        if guarded is None:
            return
        if not guarded.task.cancelling():   # the loop was too busy to cancel it yet: give it its grace first
            asyncio.get_running_loop().call_later(CANCEL_GRACE, self._overdue, key)
            return
        self._take_over(key, JobTimeoutError(guarded.message),
                        f"{guarded.message}, and ignored cancellation for {CANCEL_GRACE:g}s")

    def _take_over_interrupted(self) -> None:
        for key, guarded in list(self._guarded.items()):
            self._take_over(key, JobInterrupted("the worker was stopped at once by a second SIGINT"),
                            f"{guarded.label} was interrupted, and ignored cancellation for {CANCEL_GRACE:g}s")

    def _take_over(self, key: int, exc: Exception, why: str) -> None:
        """End the attempt of job code that ignores cancellation without it; leave the code behind."""
        guarded = self._guarded.pop(key)
        self._tasks.discard(guarded.task)      # run() stops waiting for it; the new task holds the slot
        self.left_behind.add(guarded.task, guarded.label)
        log.warning("%s: the attempt ends now; its task is left behind and cancelled again every second "
                    "(%d left behind)", why, len(self.left_behind))
        self._track(guarded.slot, asyncio.create_task(guarded.instead(exc)))
        if len(self.left_behind) >= LEFT_BEHIND_LIMIT:
            self.exit_code = self.exit_code or EXIT_BLOCKED
            self.stop(f"{len(self.left_behind)} job tasks ignore cancellation")

    async def _close_left_behind(self) -> None:
        # One last cancellation and grace; after Ctrl-C twice the user wants out, so no more waiting.
        left = await self.left_behind.close(0 if self._interrupted else CANCEL_GRACE)
        if left:
            self.exit_code = self.exit_code or EXIT_BLOCKED
            log.error("%d job task(s) still ignore cancellation; exiting with code %d so a supervisor starts a "
                      "fresh worker", left, self.exit_code)

    # -- timeouts against the visibility timeout --------------------------------------------

    def _warn_timeout(self, job_class: str, timeout: float) -> None:
        if timeout > self.max_timeout and job_class not in self._warned:
            self._warned.add(job_class)
            log.warning("%s has timeout %gs, above the %gs that QUEUE_VISIBILITY_TIMEOUT (%ss) allows: if one "
                        "blocks the event loop that long, the worker cannot renew the reservations of the jobs "
                        "beside it, and a second worker may run them", job_class, timeout,
                        max(self.max_timeout, 0), self.visibility_timeout)

    def _warn_long_timeouts(self) -> None:
        if self.options.timeout is not None:
            return
        for cls in discover_job_classes(self.packages):
            self._warn_timeout(cls.class_path(), float(cls.timeout))


def discover_job_classes(packages: tuple[str, ...]) -> list[type[Job]]:
    """Import every module of the job packages and return the Job subclasses defined there."""
    found: list[type[Job]] = []
    for package in packages:
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            continue
        names = [package] + [m.name for m in pkgutil.walk_packages(getattr(pkg, "__path__", []), package + ".")]
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                log.warning("Cannot import job module %s: %s", name, _first_line(exc))
                continue
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, Job) and value is not Job \
                        and value.__module__ == module.__name__:
                    found.append(value)
    return found


def _took(started: float) -> str:
    return f"{(time.monotonic() - started) * 1000:.1f}ms"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
