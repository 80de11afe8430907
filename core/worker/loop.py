"""The worker's loop: reserves jobs into free slots, runs each as an attempt, and stops when told or at a limit.

Each pass of the loop reserves as many jobs as there are free slots (claims make a lost answer
recoverable, a late one is checked before it starts), then every stop condition is asked in one
place, reason_to_stop() (Laravel's stopIfNecessary). An attempt is attempt.py's; storing its
outcome is settle.py's; keeping job code to its deadline is timeouts.py's.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import resource
import signal
import threading
import time
from collections import deque
from secrets import token_hex
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from core.log import one_line, redact
from core.payload import peek_uuid
from core.outage import OutageLog
from core.queue.contract import QueueConnection, ReservedJob
from core.worker.announce import WorkerEvents
from core.worker.attempt import Attempt, Attempts, discover_job_classes
from core.worker.heartbeat import Heartbeat, heartbeat_interval
from core.worker.options import WorkerOptions
from core.worker.outcome import Cancelled, Done
from core.worker.settle import Settler
from core.worker.timeouts import EXIT_BLOCKED, LeftBehind, LongTimeouts, Timeouts, Watchdog, max_blocking_timeout

if TYPE_CHECKING:
    from core.app import Application

log = logging.getLogger("worker")
KEPT_CLAIMS = 32          # reserve calls whose answers were lost, kept for recover() once the store is back
RESTART_POLL = 1.0        # seconds between reads of the queue:restart signal
MEMORY_POLL = 1.0         # seconds between reads of the resident memory, at most
EMPTY_CHECKS = 20         # --stop-when-empty: second looks at the sizes when a reserve found nothing due
EMPTY_RECHECK = 0.05      # seconds between them (a row held by another transaction is free again by then)


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
        self.packages = app.config.app.job_packages
        self.secrets = app.config.secrets()
        self.processed = 0
        self.stop_reason = ""         # why the worker stopped (or is stopping)
        self.exit_code = 0
        self.timeouts = Timeouts(hand_over=self._hand_over, blocked=self._blocked)
        self.max_timeout = max_blocking_timeout(self.visibility_timeout, self.timeouts.watchdog)
        options.check(self.max_timeout, self.visibility_timeout)
        self.attempts = Attempts(app.config, options, self.timeouts,
                                 LongTimeouts(self.max_timeout, self.visibility_timeout))
        # The jobs held, read by the heartbeat's thread: _running and the settler's acknowledgements
        # change under _held_lock.
        self._held_lock = threading.Lock()
        self._running: dict[int, ReservedJob] = {}
        self._task_of: dict[int, asyncio.Task] = {}    # slot -> the task running its job
        self._cancelled: set[str] = set()              # ids of running jobs a user cancelled (SPEC 11)
        self._in_run: set[int] = set()                 # slots whose job code runs (only those are cancelled)
        self._tasks: set[asyncio.Task] = set()
        self._slots = itertools.count(1)
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()     # a running job finished, or stop() was called
        self._signalled = False
        self._lost_claims: deque[tuple[str, float]] = deque(maxlen=KEPT_CLAIMS)   # (claim, when it was lost)
        self._started = 0.0
        self._backoff = 0.0
        self._polled_at = 0.0
        self._restart: str | None = None     # the queue:restart signal as the worker started
        self._restart_asked = False
        self._next_restart_check = 0.0
        self._next_memory_check = 0.0
        self._empty_checks = 0         # --stop-when-empty's second looks (_due_yet)
        self._outage: OutageLog       # set by run(), once the connection is open
        self._settler: Settler        # likewise
        self._events: WorkerEvents    # likewise
        self._conn: QueueConnection   # likewise
        # Concurrency 1: the next reserve, sent with the acknowledgement by the job that just finished
        # (_reserve_ahead): how to send one, and the one on its way (its answer, jobs it carries, claim, when).
        self._held_acks: str | None = None   # above concurrency 1: how held acknowledgements go (run())
        self._send_ahead: Callable[..., Callable[[], Any] | None] | None = None
        self._ahead: tuple[Callable[[], Any], list[Attempt], str, float] | None = None

    @property
    def watchdog(self) -> Watchdog:
        return self.timeouts.watchdog

    @property
    def left_behind(self) -> LeftBehind:
        return self.timeouts.left_behind

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self) -> int:
        conn = await self.app.queue.connection(self.options.connection)
        # Every worker writes failed_jobs: one that cannot reach it says so now (a Redis connection opens it
        # only on first need), not once per failing job.
        await self.app.queue.failed_store()
        self._outage = OutageLog(log, conn, self.secrets)
        self._events = WorkerEvents(conn.name, self.secrets)
        self._settler = Settler(conn, self._outage, self.timeouts, self._held_lock, self.secrets,
                                self.visibility_timeout, self._events)
        self.attempts.bind(conn)
        # Finished jobs' acknowledgements and the next reserve: at concurrency 1 on one queue, one call
        # for both where the store has it. Above it the store says (held_acknowledgements) whether the
        # jobs that finish while every slot is busy wait for the reserve their freed slot triggers:
        # "carried" in its call (one queue), or sent right "after" it is written; else each goes at once.
        single = len(self.options.queues) == 1 and callable(getattr(conn, "acknowledge_and_reserve", None))
        held = getattr(conn, "held_acknowledgements", None) if self.options.concurrency > 1 else None
        self._held_acks = held if held == "after" or (held == "carried" and single) else None
        self._settler.deferred = self.options.concurrency == 1 and single
        self._conn = conn
        self._send_ahead = getattr(conn, "send_acknowledge_and_reserve", None) if self._settler.deferred else None
        self._handle_signals(True)
        self._warn_long_timeouts()
        self.timeouts.start()
        self._started = time.monotonic()
        heartbeat = Heartbeat(self.app, self.options.connection, heartbeat_interval(self.visibility_timeout),
                              self._held, self._outage, self.secrets, self.attempts.held_locks,
                              self.visibility_timeout, self._cancel_from_thread(asyncio.get_running_loop()))
        heartbeat.start()
        try:
            # No job before its reservation can be renewed: one that outlasts the visibility timeout would run twice.
            await heartbeat.until_open(self._stopping)
            # Read before "Worker started": a queue:restart sent once that line is out is one it sees.
            self._restart = await self._read_restart_signal(conn)
            log.info("Worker started: connection %s, queues %s, concurrency %d (pid %d)", conn.name,
                     ",".join(self.options.queues), self.options.concurrency, os.getpid())
            self._events.starting(self.options.queues, self.options.concurrency)
            await self._loop(conn)
            await self._release_lost_claims(conn)
            await self._wind_down()
        finally:
            await heartbeat.stop()      # after the last acknowledgement: it renews jobs waiting for theirs
            await self.attempts.release_all()   # locks of code still left behind: it ends with the process
            self.timeouts.stop()
            self._handle_signals(False)
            await self._events.stopping(self.options.queues, self.stop_reason or "done", self.exit_code)
        log.info("Worker stopped (%s) after %d attempt(s)", self.stop_reason or "done", self.processed)
        return self.exit_code

    def stop(self, reason: str) -> None:
        if self._stopping.is_set():
            log.info("Already stopping; waiting for %d running job(s) to finish", len(self._running))
            return
        self.stop_reason = reason
        self._changed.set()
        hint = " (a SIGINT now releases them at once)" if reason in ("SIGINT", "SIGTERM") and self._running else ""
        log.info("Stopping (%s): no new jobs; waiting for %d running job(s)%s", reason, len(self._running), hint)
        self._stopping.set()

    def reason_to_stop(self, taken: int | None = None) -> str | None:
        """Why the worker should stop now, or None: every limit in one place (Laravel's stopIfNecessary).

        `taken` is how many jobs the pass of the loop that just ended reserved (0: none was due);
        None when that pass made no reserve (every slot busy, the store away) or a job just finished.
        --once and --stop-when-empty look only at a reserve.
        """
        o = self.options
        if o.max_time and time.monotonic() - self._started >= o.max_time:
            return f"--max-time {o.max_time:g}s reached"
        if self._restart_asked:
            return "queue:restart"
        if taken == 0 and o.stop_when_empty and (o.once or not self._running):
            return "queue empty"
        if taken is not None and o.once:
            return "--once"
        if o.max_jobs and self.processed + len(self._running) >= o.max_jobs:
            return f"--max-jobs {o.max_jobs} reached"
        return self._over_memory()

    def _over_memory(self) -> str | None:
        """Only after a job, and at most once a second: reading /proc per job costs more than a no-op job."""
        now = time.monotonic()
        if not self.options.memory or not self.processed or now < self._next_memory_check:
            return None
        self._next_memory_check = now + MEMORY_POLL
        used = memory_mb()
        return f"memory {used:.0f}MB over --memory {self.options.memory}MB" if used > self.options.memory else None

    def _stop_if_necessary(self, taken: int | None = None) -> bool:
        """Stop at the first limit reached; True once the worker is stopping, for whatever reason."""
        if not self._stopping.is_set():
            reason = self.reason_to_stop(taken)
            if reason is not None:
                self.stop(reason)
        return self._stopping.is_set()

    async def _wind_down(self) -> None:
        """Stopping: wait for the running jobs and their acknowledgements, then for code left behind."""
        self._settler.deferred = False      # no reserve will carry them any more
        self._settler.flush()
        while self._tasks:   # re-read: an attempt taken over from left-behind code goes on in a new task
            await asyncio.wait(list(self._tasks), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        await self._settler.drain()
        left = await self.timeouts.close()
        if left:
            self.exit_code = self.exit_code or EXIT_BLOCKED
            log.error("%d job task(s) still ignore cancellation; exiting with code %d so a supervisor starts a "
                      "fresh worker", left, self.exit_code)

    # -- signals ---------------------------------------------------------------------------

    def _handle_signals(self, on: bool) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            if on:
                loop.add_signal_handler(sig, self._on_signal, sig)
            else:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        """SIGINT or SIGTERM stops gracefully; a SIGINT after that (Ctrl-C twice) cuts running jobs short.

        A repeated SIGTERM does not: process managers mean a graceful stop however often they send
        it, and the kernel's parent-death signal arrives again as each thread of a dying supervisor exits.
        """
        if self._signalled and sig == signal.SIGINT:
            if not self.timeouts.interrupted:
                self._interrupt(sig)
            return
        self._signalled = True
        self.stop(sig.name)

    def _interrupt(self, sig: signal.Signals) -> None:
        """Cancel running job code so its jobs go back on the queue at once (JobInterrupted)."""
        self.exit_code = self.exit_code or 128 + sig
        log.warning("%s while stopping: cancelling %d running job(s) and releasing them to the queue now", sig.name,
                    len(self._running))
        self.timeouts.interrupt()

    # -- the loop --------------------------------------------------------------------------

    async def _loop(self, conn: QueueConnection) -> None:
        while not self._stopping.is_set():
            taken = await self._pass(conn)
            if taken == 0 and await self._due_yet(conn):
                taken = None       # not empty: a due job was passed over a moment; look again
            if self._stop_if_necessary(taken):
                break
            if taken == 0:
                await self._wait_after_empty()
        if self._ahead is not None:     # told to stop while a reserve ahead was on its way: its answer is
            await self._pass(conn)      # read (the acknowledgement it carried), its job put back

    async def _due_yet(self, conn: QueueConnection) -> bool:
        """--stop-when-empty found nothing to reserve, with nothing running: whether the store still
        counts due jobs. A database reserve skips rows another transaction holds a moment (SKIP
        LOCKED: a heartbeat's renewal, another worker's acknowledgement), and "empty" must mean no
        due job, not none free this instant. Asked EMPTY_CHECKS times at most, EMPTY_RECHECK apart;
        with no sizes (the admin interface is optional) the reserve's word stands."""
        if not (self.options.stop_when_empty and not self._running and not self.options.once
                and self._empty_checks < EMPTY_CHECKS and callable(getattr(conn, "sizes", None))):
            return False
        self._empty_checks += 1
        try:
            sizes = await conn.sizes(list(self.options.queues))   # type: ignore[attr-defined]
        except Exception as exc:  # the reserve reports the store's trouble; this look is only a second opinion
            log.debug("sizes not read before stopping when empty: %s", exc)
            return False
        if not any(size.pending for size in sizes.values()):
            return False
        await self._idle(EMPTY_RECHECK)
        return True

    async def _pass(self, conn: QueueConnection) -> int | None:
        """One look for work: how many jobs it reserved and started, or None when it reserved
        nothing (every slot busy, the store away, or queue:restart called). A reserve ahead on its
        way (_reserve_ahead) is answered first: it was sent only when nothing below stood in its way."""
        if self._ahead is None:
            if not await self._check_restart(conn) or self._restart_asked:
                self._settler.flush()
                return None
            if self._lost_claims and not await self._recover(conn):
                self._settler.flush()
                return None
        free = self.options.concurrency - len(self._running)
        if self._ahead is not None:     # sent by the job that finished, perhaps while the checks above waited
            free = 1
        if self.options.max_jobs:
            free = min(free, self.options.max_jobs - self.processed - len(self._running))
        if free <= 0:
            if self._held_acks is not None and len(self._running) >= self.options.concurrency:
                await self._wait_for_change(hold_acknowledgements=True)
            else:
                self._settler.flush()
                await self._wait_for_change()
            return None
        jobs = await self._reserve(conn, free)
        if jobs and self._stopping.is_set():    # told to stop while the reserve was in flight: no new job
            await self._put_back(conn, jobs)
            return None
        for job in jobs or []:
            self._start(job)
        return None if jobs is None else len(jobs)

    async def _wait_after_empty(self) -> None:
        if self.options.stop_when_empty:
            await self._wait_for_change()  # a running job may release a retry
        else:
            # A store that blocked in reserve_wait (Redis) has already waited its --sleep.
            await self._idle(self.options.sleep - (time.monotonic() - self._polled_at))

    async def _wait_for_change(self, hold_acknowledgements: bool = False) -> None:
        """Until a running job finishes or the worker is told to stop. With `hold_acknowledgements`
        (every slot busy, above concurrency 1: _held_acks) the jobs that finish meanwhile wait for the
        reserve that follows, instead of a call of their own (concurrency 1 holds them always)."""
        self._changed.clear()
        if not hold_acknowledgements:
            await self._changed.wait()
            return
        self._settler.deferred = True
        try:
            await self._changed.wait()
        finally:
            self._settler.deferred = False

    async def _idle(self, seconds: float) -> None:
        if seconds > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()

    async def _back_off(self, exc: Exception | None = None) -> None:
        """Wait after a failed store call, doubling from 0.5 s to 10 s; `exc` is reported first."""
        self._backoff = min(10.0, self._backoff * 2 or 0.5)
        if exc is not None:
            self._report(exc, self._backoff)
        await self._idle(self._backoff)

    def _report(self, exc: Exception, backoff: float) -> None:
        """An outage is one line; anything else, each time."""
        if not self._outage.failed(exc):
            log.error("Queue connection error: %s; retrying in %.1fs",
                      redact(str(exc) or type(exc).__name__, self.secrets), backoff)

    # -- queue:restart ---------------------------------------------------------------------

    async def _read_restart_signal(self, conn: QueueConnection) -> str | None:
        """The restart signal as this worker starts; None if the store cannot say now (read later)."""
        try:
            return await conn.restart_signal()
        except Exception as exc:  # the loop reports the store's trouble
            log.debug("restart signal not read: %s", exc)
            return None

    async def _check_restart(self, conn: QueueConnection) -> bool:
        """Read the restart signal, at most once a second; False when the store is away (backed off)."""
        if time.monotonic() < self._next_restart_check:
            return True
        self._next_restart_check = time.monotonic() + RESTART_POLL
        try:
            signal_now = await conn.restart_signal()
        except Exception as exc:  # the reserve reports other trouble
            log.debug("restart check failed: %s", exc)
            if not self._outage.failed(exc):
                return True
            await self._back_off()    # no point reserving from a store that is away
            return False
        if self._restart is None:     # unread at start: the first answer is the baseline
            self._restart = signal_now
        self._restart_asked = signal_now != self._restart
        return True

    # -- reserving -------------------------------------------------------------------------

    async def _reserve(self, conn: QueueConnection, free: int) -> list[ReservedJob] | None:
        """Up to `free` jobs, still this worker's; [] if none is due, None after a failed call (backed off)."""
        o = self.options
        claim = ""
        try:
            self._polled_at = time.monotonic()
            # Busy: as many jobs as there are free slots in one round trip. Idle: block for one.
            # Each call names its reservation (claim): if its answer is lost, recover() finds it.
            jobs: list[ReservedJob] = []
            if self._ahead is not None:
                answer, riding, claim, self._polled_at = self._ahead
                self._ahead = None
                jobs = await self._acknowledge_and_reserve(conn, riding, claim, answer=answer)
            elif free > 1 and not o.once:
                claim = token_hex(8)
                if self._held_acks == "carried" and (riding := self._settler.take()):
                    jobs = await self._acknowledge_and_reserve(conn, riding, claim, free)
                else:
                    if self._held_acks == "after":
                        self._settler.flush()   # its task runs, and sends them, once this reserve is written
                    jobs = await conn.reserve_many(o.queues, free, claim=claim)
            elif len(o.queues) == 1 and (riding := self._settler.take()):
                claim = token_hex(8)
                jobs = await self._acknowledge_and_reserve(conn, riding, claim)
            if not jobs:
                self._settler.flush()       # none waits while this call blocks for new work
                # --stop-when-empty asks about now: no point blocking for a job to arrive.
                claim = token_hex(8)
                job = await conn.reserve_wait(o.queues, 0 if o.stop_when_empty else o.sleep, self._stopping,
                                              claim=claim)
                jobs = [job] if job is not None else []
        except Exception as exc:
            # The store may have acted before the call failed (its answer lost): keep the claim to ask.
            self._lost_claims.append((claim, time.monotonic()))
            await self._back_off(exc)
            return None
        self._backoff = 0.0
        self._outage.recovered()
        if jobs and time.monotonic() - self._polled_at > heartbeat_interval(self.visibility_timeout):
            jobs = await self._still_held(conn, jobs, claim)
        return jobs

    async def _acknowledge_and_reserve(self, conn: QueueConnection, riding: list[Attempt], claim: str,
                                       limit: int = 1, answer: Callable[[], Any] | None = None) -> list[ReservedJob]:
        """The finished jobs' acknowledgements and the next reserve (of up to `limit` jobs) in one call
        (Settler.deferred); `answer` reads that of a call already sent (_reserve_ahead)."""
        try:
            done, jobs = await (answer() if answer is not None else conn.acknowledge_and_reserve(  # type: ignore[attr-defined]
                [attempt.reserved for attempt in riding], self.options.queues[0], claim, limit))
        except BaseException:
            self._settler.give_back(riding)     # acknowledged the usual way, retried while the store is away
            raise
        self._settler.acknowledged(riding, done)
        return jobs

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
            return await self._renewed(conn, jobs, claim, "the worker read it (the event loop was blocked)")
        except Exception as exc:
            self._report(exc, 0.0)
            self._lost_claims.append((claim, time.monotonic()))   # recovered once the store answers
            return []

    async def _renewed(self, conn: QueueConnection, jobs: list[ReservedJob], claim: str,
                       before: str) -> list[ReservedJob]:
        """Of jobs reserved by call `claim` a while ago, those still this worker's, renewed for a whole
        visibility timeout before they start; the others are not started."""
        await conn.extend(jobs)
        held = await conn.recover(self.options.queues, claim)
        kept = {(job.queue, job.id) for job in held}
        for job in jobs:
            if (job.queue, job.id) not in kept:
                released = await _unreserve(conn, job)
                log.warning("%s on %s: its reservation lapsed before %s; not started, %s", _named(job), job.queue,
                            before, "released to the queue" if released else "it is another reservation's now")
        return held

    async def _recover(self, conn: QueueConnection) -> bool:
        """Start the jobs that reserve calls whose answers were lost took: their attempts are counted.

        A claim older than the visibility timeout is dropped: its jobs (if any) have lapsed. Those
        found are renewed before they start: held since the lost call, up to a visibility timeout
        ago, one could lapse before the heartbeat's next beat and be taken again while it ran (a
        PostgreSQL soak: recovered 0.1 s before its reservation ran out). False when the store could
        not say (backed off).
        """
        try:
            while self._lost_claims:
                claim, lost_at = self._lost_claims[0]
                if time.monotonic() - lost_at < self.visibility_timeout:
                    jobs = await conn.recover(self.options.queues, claim)
                    if jobs:
                        jobs = await self._renewed(conn, jobs, claim, "it was recovered")
                    if self._stopping.is_set():      # told to stop while the store was away: no new job
                        await self._put_back(conn, jobs)
                        jobs = []
                    for job in jobs:
                        log.warning("%s on %s: its reservation's answer was lost; recovered and started",
                                    _named(job), job.queue)
                        self._start(job)
                self._lost_claims.popleft()
        except Exception as exc:
            await self._back_off(exc)
            return False
        self._outage.recovered()
        return True

    async def _put_back(self, conn: QueueConnection, jobs: list[ReservedJob]) -> None:
        """Reserved jobs a stopping worker will not start go back on the queue now; any the store cannot
        take back now come back by themselves after the visibility timeout."""
        for job in jobs:
            try:
                await _unreserve(conn, job)
            except Exception as exc:  # noqa: BLE001  (an outage: the reservation lapses)
                log.warning("%s: stopping, not started; it runs after the visibility timeout (%s)", one_line(job.id),
                            redact(str(exc) or type(exc).__name__, self.secrets))

    async def _release_lost_claims(self, conn: QueueConnection) -> None:
        """Stopping: jobs that lost answers reserved go back on the queue now, rather than after the visibility
        timeout."""
        if self._outage.active:     # the store is still away: the jobs come back after the visibility timeout
            return
        for claim, lost_at in list(self._lost_claims):
            if time.monotonic() - lost_at >= self.visibility_timeout:
                continue
            try:
                for job in await conn.recover(self.options.queues, claim):
                    await _unreserve(conn, job)
            except Exception as exc:
                log.debug("could not recover claim %s while stopping: %s", claim, exc)
                return
        self._lost_claims.clear()

    # -- slots -----------------------------------------------------------------------------

    def _start(self, job: ReservedJob) -> None:
        slot = next(self._slots)
        with self._held_lock:
            self._running[slot] = job
        self._track(slot, asyncio.create_task(self._process(slot, job)))

    def _track(self, slot: int, task: asyncio.Task) -> None:
        """The job's slot is busy until `task` ends, or until the task is left behind and replaced."""
        self._tasks.add(task)
        self._task_of[slot] = task
        task.add_done_callback(functools.partial(self._finished, slot))

    def _finished(self, slot: int, task: asyncio.Task) -> None:
        if task not in self._tasks:    # left behind: the task that took over its attempt frees the slot
            return
        self._tasks.discard(task)
        if self._task_of.get(slot) is task:
            del self._task_of[slot]
        with self._held_lock:
            self._running.pop(slot, None)
        self.processed += 1
        self._changed.set()
        o = self.options     # after a job only these limits can be reached (reason_to_stop): ask only then
        if (o.max_time or o.max_jobs or self._restart_asked
                or (o.memory and time.monotonic() >= self._next_memory_check)):
            self._stop_if_necessary()

    def _hand_over(self, task: asyncio.Task, slot: int, ending: Coroutine[Any, Any, None]) -> None:
        """Timeouts left `task` behind: its attempt ends in a new task, which holds the slot."""
        self._tasks.discard(task)      # run() stops waiting for it
        self._track(slot, asyncio.create_task(ending))

    def _cancel_from_thread(self, loop: asyncio.AbstractEventLoop) -> Callable[[list[str]], None]:
        """What the heartbeat's thread calls with the ids of held jobs someone cancelled."""
        def cancel(ids: list[str]) -> None:
            loop.call_soon_threadsafe(self._cancel_jobs, ids)
        return cancel

    def _cancel_jobs(self, ids: list[str]) -> None:
        """SPEC 11: cancel the tasks of running jobs someone cancelled; _process settles them as Cancelled."""
        with self._held_lock:
            slots = [slot for slot, job in self._running.items()
                     if job.id in ids and job.id not in self._cancelled and slot in self._in_run]
        for slot in slots:
            task = self._task_of.get(slot)
            if task is not None and not task.done():
                self._cancelled.add(self._running[slot].id)
                task.cancel()

    def _blocked(self, count: int) -> None:
        self.exit_code = self.exit_code or EXIT_BLOCKED
        self.stop(f"{count} job tasks ignore cancellation")

    def _held(self) -> list[ReservedJob]:
        """The heartbeat's thread: the jobs running and those waiting for their acknowledgement."""
        with self._held_lock:
            return [*self._running.values(), *self._settler.unacknowledged()]

    # -- one job ---------------------------------------------------------------------------

    async def _process(self, slot: int, reserved: ReservedJob) -> None:
        attempt, outcome = self.attempts.begin(reserved, slot)
        if outcome is None:
            heard = self._events.processing(attempt)   # JobProcessing: heard before the middleware runs
            if heard is not None:
                await heard
                attempt.started = time.monotonic()     # a job's time is its own, not its listeners'
            self._in_run.add(slot)
            try:
                outcome = await self.attempts.run(attempt, self._settler.settle)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if reserved.id in self._cancelled and task in self._tasks and not self.timeouts.interrupted:
                    self._cancelled.discard(reserved.id)
                    task.uncancel()      # cancelled by a user: settled as such
                    outcome = Cancelled()
                else:
                    if task in self._tasks:   # not left behind: the job is still ours to release
                        await self._settler.put_back(attempt)
                    raise
            finally:
                self._in_run.discard(slot)
        if type(outcome) is Done:       # the common outcome: no coroutine for it (settle() awaits nothing then)
            self._settler.done(attempt, outcome.result)
            if self._send_ahead is not None:
                self._reserve_ahead()
        else:
            await self._settler.settle(attempt, outcome)

    def _reserve_ahead(self) -> None:
        """Concurrency 1: send the finished job's acknowledgement with the next reserve now, from the
        job's own task, instead of once the task has ended and the loop came round to it: winding
        the job down and the loop's turns then overlap the round trip (the loop reads the answer).
        Only when the loop's next pass would surely make that call: no stop, limit or check due."""
        o = self.options
        now = time.monotonic()
        if (self._ahead is not None or self._stopping.is_set() or self._restart_asked or self._lost_claims
                or o.once or o.max_time or (o.max_jobs and self.processed + 1 >= o.max_jobs)
                or now >= self._next_restart_check or (o.memory and now >= self._next_memory_check)):
            return
        riding = self._settler.take()
        if not riding:
            return
        claim = token_hex(8)
        answer = self._send_ahead([attempt.reserved for attempt in riding], o.queues[0], claim)  # type: ignore[misc]
        if answer is None:          # the store could not send it at once: the loop makes the call as usual
            self._settler.untake(riding)
            return
        self._ahead = (answer, riding, claim, now)

    def _warn_long_timeouts(self) -> None:
        if self.options.timeout is not None:
            return
        for cls in discover_job_classes(self.packages):
            self.attempts.long_timeouts.check(cls.class_path(), float(cls.timeout))


def _named(job: ReservedJob) -> str:
    """A job not started yet, for a log line: its id as the RUNNING and DONE lines give it (the payload's
    uuid), so one grep finds all of a job's lines; the store's own id where the payload names none."""
    uuid = peek_uuid(job.payload)
    return one_line(job.id) if uuid is None or uuid == job.id else f"{uuid} (row {one_line(job.id)})"


async def _unreserve(conn: QueueConnection, job: ReservedJob) -> bool:
    """A job reserved but never started goes back with its attempt taken back where the store can
    (`unreserve`, optional); else released as it is, the attempt counted."""
    unreserve = getattr(conn, "unreserve", None)
    return await (unreserve(job) if unreserve is not None else conn.release(job, 0))
