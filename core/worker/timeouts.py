"""Timeouts for job code: code that awaits, code that blocks the event loop, code that ignores cancellation.

`Timeouts.run_limited` runs job code (handle() or failed()) under its deadline; the rest of this
module is what makes that deadline hold whatever the code does.

Each attempt runs under `asyncio.timeout`, which cancels code that awaits. `asyncio` cannot cancel
code that blocks the loop (`time.sleep`, a busy loop, a blocking socket), so a watchdog thread
notices a job still running past its deadline and sends the worker's main thread a signal; the
handler looks at the interrupted stack and, only if that job's `run_guarded` frame is on it, raises
JobTimeoutError right where the job is blocked. The signal is repeated each second while the job
goes on. The handler never raises inside the framework's own store calls or a driver's code (a
read cut in half leaves its connection answering the next call with this one's reply): it defers,
and the watchdog signals again at its next tick, until the job is back in its own code. A job
stuck in C code that never returns to Python (the handler cannot run, or keeps finding the job on
the stack) is ended by exiting the process after `hard_limit` seconds, so its
reservation expires and the attempt is counted rather than hanging forever.

Job code that swallows `CancelledError` is neither: the loop runs, the job just does not end.
Once it is still running CANCEL_GRACE seconds past its deadline, the watchdog tells the worker
(`on_overdue`), which ends the attempt without it and leaves the task behind (`LeftBehind`),
cancelling it again every second. Such a job never makes the watchdog exit the process.
Cost: one thread waking every 100 ms; nothing on the job's own path but a dict update.
"""
from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import functools
import importlib.util
import logging
import os
import signal
import itertools
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from core.worker.heartbeat import heartbeat_interval

log = logging.getLogger("worker")
SIGNAL = signal.SIGUSR2
EXIT_BLOCKED = 70
CANCEL_GRACE = 2.0        # seconds cancelled job code may take to end before the worker leaves it behind
RECANCEL_EVERY = 1.0      # seconds between cancellations of job code left behind
TICK = 0.1                # seconds between the watchdog thread's looks at the watches
DEADMAN_SLACK = 5.0       # the dead-man switch fires at least this long after the watchdog's own exit would have
DEADMAN_IDLE = 1.0        # seconds without job code before it is disarmed
LEFT_BEHIND_LIMIT = 3     # job tasks ignoring cancellation at once before the worker stops to be replaced
RENEWAL_ALLOWANCE = 0.5   # seconds for the renewal's round trip and its thread getting to run, on a loaded host
# Code a timeout must never interrupt: the framework's store calls and the drivers and asyncio
# machinery under them. Packages are matched by directory, single modules by file.
PROTECTED_PACKAGES = ("core.queue", "redis", "hiredis", "aiomysql", "pymysql", "aiosqlite", "asyncio")
PROTECTED_MODULES = ("core.database", "core.dispatch")


class JobTimeoutError(TimeoutError):
    """A job attempt ran past its timeout."""
    __module__ = "core.worker"    # the name failed_jobs records: where users import it from


class JobInterrupted(Exception):
    """The worker was told to stop at once (a SIGINT after a stop signal) while the job ran."""
    __module__ = "core.worker"


@dataclass
class _Watch:
    deadline: float
    message: str
    signalled_at: float = 0.0
    reported: bool = False    # on_overdue was called for it
    idle_at: float = 0.0      # when the signal handler last found this job off the stack: it awaits, not blocks


async def run_guarded(watch_key: int, fn: Callable[[], Awaitable[Any]]) -> Any:
    """The frame the signal handler looks for: job code running under it may be interrupted."""
    return await fn()


class Watchdog:
    """`on_overdue(key)` is called on the event loop once job code is still running CANCEL_GRACE past its deadline."""

    def __init__(self, on_overdue: Callable[[int], None] | None = None, grace: float = 0.25,
                 hard_limit: float = 15.0) -> None:
        self.on_overdue, self.grace, self.hard_limit = on_overdue, grace, hard_limit
        self._watches: dict[int, _Watch] = {}
        # Reentrant: the signal handler runs on the main thread, possibly inside watch()/unwatch().
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None
        self._armed_at: float | None = None      # when the dead-man switch fires (_arm), if armed
        self._busy_at = 0.0                      # when job code was last seen running

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("watchdog disabled: the worker is not on the main thread")
            return
        self._main = threading.get_ident()      # the main thread's: checked above
        self._loop = asyncio.get_running_loop()
        self._previous = signal.signal(SIGNAL, self._on_signal)
        self._thread = threading.Thread(target=self._watch_loop, name="job-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            signal.signal(SIGNAL, self._previous or signal.SIG_DFL)
            self._thread = None
        self._disarm()

    @property
    def overrun(self) -> float:
        """How long past its deadline code that blocks the loop may still run: the grace, then
        the signal at the thread's next tick, and a deferral out of a store call or two."""
        return self.grace + 3 * TICK

    def watch(self, key: int, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            self._watches[key] = _Watch(deadline, message)
            # Armed before the job's code runs: code that holds the GIL from its first instruction
            # would keep this thread from ever arming it. Rarely more than a comparison (_arm).
            if self._thread is not None:
                self._arm(deadline)

    def unwatch(self, key: int) -> None:
        with self._lock:
            self._watches.pop(key, None)

    def _arm(self, latest: float) -> None:
        """The dead-man switch, for job code whose deadline (or last sign of life) is `latest`.

        Job code stuck in C code that holds the GIL (a regex backtracking for ever, a C extension's
        loop) starves this thread as well as the event loop: neither the signal nor the exit below
        can happen, and the worker hung for good. faulthandler's timer is a C thread that needs no
        GIL. Armed for DEADMAN_SLACK past the moment this thread would exit (and up to as much
        again, so that it is moved on once every few seconds, not for every job: each arming starts
        a thread, about 30 us), and moved on while this thread runs, it fires only when this thread
        could not: it writes every thread's traceback to stderr (where the job was stuck) and ends
        the process with exit code 1. Disarmed once no job code runs: a worker suspended with
        Ctrl-Z while idle resumes as it was."""
        needed = latest + self.hard_limit + DEADMAN_SLACK
        if self._armed_at is not None and self._armed_at >= needed:
            return
        stderr = sys.__stderr__
        if stderr is None:
            return
        fire_at = needed + DEADMAN_SLACK
        try:
            faulthandler.dump_traceback_later(max(fire_at - time.monotonic(), 1.0), exit=True, file=stderr)
        except (ValueError, OSError, AttributeError, RuntimeError) as exc:   # no stderr to write to
            log.debug("dead-man switch not armed: %s", exc)
            return
        self._armed_at = fire_at

    def _disarm(self) -> None:
        with self._lock:
            if self._armed_at is not None:
                faulthandler.cancel_dump_traceback_later()
                self._armed_at = None

    def _watch_loop(self) -> None:
        while not self._stopped.wait(TICK):
            now = time.monotonic()
            with self._lock:
                overdue = [(k, w) for k, w in self._watches.items() if now > w.deadline + self.grace]
                latest = max((max(w.deadline, w.idle_at) for w in self._watches.values()), default=None)
                if latest is not None:
                    self._busy_at = now
                    self._arm(latest)
            if latest is None and now - self._busy_at > DEADMAN_IDLE:
                self._disarm()
            for key, watch in overdue:
                if not watch.reported and now > watch.deadline + CANCEL_GRACE and self.on_overdue is not None:
                    watch.reported = True
                    with contextlib.suppress(RuntimeError):    # the loop closed meanwhile
                        self._loop.call_soon_threadsafe(self.on_overdue, key)
                # Only a job that kept the loop from running the handler, or was on the stack each
                # time it ran, counts as stuck; one that awaits (ignoring cancellation) does not.
                if now > max(watch.deadline, watch.idle_at) + self.hard_limit:
                    log.critical("%s, and could not be interrupted for %.0fs; exiting so the job is retried "
                                 "or failed by the next worker", watch.message, self.hard_limit)
                    logging.shutdown()
                    os._exit(EXIT_BLOCKED)
                if now - watch.signalled_at >= 1.0:
                    watch.signalled_at = now
                    signal.pthread_kill(self._main, SIGNAL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        on_stack: dict[Any, bool] = {}      # watch key -> protected code runs above its run_guarded frame
        protected = False
        while frame is not None:
            if frame.f_code is run_guarded.__code__:
                on_stack.setdefault(frame.f_locals.get("watch_key"), protected)
            elif not protected and _protected(frame.f_code.co_filename):
                protected = True
            frame = frame.f_back
        with self._lock:
            for key, watch in self._watches.items():
                if key not in on_stack:
                    watch.idle_at = now
            overdue = [k for k in on_stack if k in self._watches and now > self._watches[k].deadline]
            for key in overdue:
                if on_stack[key]:
                    self._watches[key].signalled_at = 0.0     # in a store call: look again at the next tick
            raising = [self._watches[k].message for k in overdue if not on_stack[k]]
        if raising and len(raising) == len(overdue):
            raise JobTimeoutError(raising[0])


@functools.lru_cache(maxsize=4096)
def _protected(filename: str) -> bool:
    """Whether code from this file belongs to the framework's store calls, a driver or asyncio."""
    return filename.startswith(_protected_roots()) or filename in _protected_files()


@functools.cache
def _protected_roots() -> tuple[str, ...]:
    roots = []
    for name in PROTECTED_PACKAGES:
        spec = _spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            roots.append(str(Path(location).resolve()) + os.sep)
            roots.append(location.rstrip(os.sep) + os.sep)
    return tuple(dict.fromkeys(roots))


@functools.cache
def _protected_files() -> frozenset[str]:
    files = set()
    for name in PROTECTED_MODULES:
        spec = _spec(name)
        if spec and spec.origin:
            files.update({spec.origin, str(Path(spec.origin).resolve())})
    return frozenset(files)


def _spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


class LeftBehind:
    """Job code that ignored cancellation past its grace: the worker no longer waits for it, but keeps cancelling it."""

    def __init__(self) -> None:
        self.tasks: dict[asyncio.Task, str] = {}      # task -> what it was running
        self._canceller: asyncio.Task | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, task: asyncio.Task, what: str) -> None:
        self.tasks[task] = what
        task.add_done_callback(self._ended)
        if self._canceller is None:
            self._canceller = asyncio.create_task(self._keep_cancelling())

    async def close(self, grace: float) -> int:
        """At shutdown: cancel each once more and wait up to `grace`; returns how many still run."""
        if self.tasks:
            for task in self.tasks:
                task.cancel()
            await asyncio.wait(list(self.tasks), timeout=grace)
        if self._canceller is not None:
            self._canceller.cancel()
        return len(self.tasks)

    def _ended(self, task: asyncio.Task) -> None:
        what = self.tasks.pop(task, "job code")
        if not task.cancelled():
            task.exception()                           # retrieved: its outcome no longer counts
        log.info("%s: the task left behind has ended", what)

    async def _keep_cancelling(self) -> None:
        try:
            while self.tasks:
                await asyncio.sleep(RECANCEL_EVERY)
                for task in list(self.tasks):
                    task.cancel()
        finally:
            self._canceller = None


class _Guarded(NamedTuple):
    """Job code running under its deadline, and how its attempt ends if the code ignores cancellation."""
    task: asyncio.Task
    slot: int                                                  # the job's key in Worker._running
    instead: Callable[[Exception], Coroutine[Any, Any, None]]  # ends the attempt without the code
    label: str
    message: str                                               # what a timeout says


class Timeouts:
    """Runs job code under its deadline, and ends the attempt of code that ignores cancellation without it.

    The worker is told through two callbacks: `hand_over(task, slot, ending)`, when the attempt of
    `task` goes on in `ending` (a task of its own, holding the job's slot), and `blocked(n)`, when
    n tasks left behind at once mean the worker must stop and be replaced.
    """

    def __init__(self, hand_over: Callable[[asyncio.Task, int, Coroutine[Any, Any, None]], None],
                 blocked: Callable[[int], None]) -> None:
        self.watchdog = Watchdog(on_overdue=self._overdue)
        self.left_behind = LeftBehind()
        self.interrupted = False      # a second SIGINT: cancelled job code ends its attempt as JobInterrupted
        self._hand_over = hand_over
        self._blocked = blocked
        self._guarded: dict[int, _Guarded] = {}     # job code running now, by watch key
        self._keys = itertools.count(1)

    def start(self) -> None:
        self.watchdog.start()

    def stop(self) -> None:
        self.watchdog.stop()

    async def run_limited(self, fn: Callable[[], Awaitable[object]], timeout: float, message: str, label: str,
                          slot: int, instead: Callable[[Exception], Coroutine[Any, Any, None]]) -> object:
        """Run job code for at most `timeout` seconds, whether it awaits, blocks the loop or ignores
        cancellation; returns what the code returned.

        Code still running CANCEL_GRACE past its deadline is left behind (_overdue): `instead` ends
        its attempt in a task of its own, and this call, if it ever returns, raises CancelledError.
        """
        key = next(self._keys)
        self._guarded[key] = _Guarded(asyncio.current_task(), slot, instead, label, message)  # type: ignore[arg-type]
        self.watchdog.watch(key, timeout, message)
        try:
            async with asyncio.timeout(timeout) as scope:
                return await run_guarded(key, fn)
        except TimeoutError as exc:
            if scope.expired() and not isinstance(exc, JobTimeoutError):
                raise JobTimeoutError(message) from None
            raise
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise JobInterrupted("the worker was stopped at once by a second SIGINT") from None
        finally:
            self.watchdog.unwatch(key)
            if self._guarded.pop(key, None) is None:
                raise asyncio.CancelledError   # left behind: another task ended its attempt; nothing more to do

    def interrupt(self) -> None:
        """Cancel running job code so its jobs go back on the queue at once (JobInterrupted)."""
        self.interrupted = True
        for guarded in self._guarded.values():
            guarded.task.cancel()
        asyncio.get_running_loop().call_later(CANCEL_GRACE, self._take_over_interrupted)

    async def close(self) -> int:
        """At shutdown: how many tasks left behind still ignore cancellation after one last chance."""
        # After Ctrl-C twice the user wants out: no more waiting.
        return await self.left_behind.close(0 if self.interrupted else CANCEL_GRACE)

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
        self.left_behind.add(guarded.task, guarded.label)
        log.warning("%s: the attempt ends now; its task is left behind and cancelled again every second "
                    "(%d left behind)", why, len(self.left_behind))
        self._hand_over(guarded.task, guarded.slot, guarded.instead(exc))
        if len(self.left_behind) >= LEFT_BEHIND_LIMIT:
            self._blocked(len(self.left_behind))


def max_blocking_timeout(visibility_timeout: float, watchdog: Watchdog) -> float:
    """The longest timeout a job may have and hold the interpreter for, without another job's reservation lapsing.

    The heartbeat's own thread renews while job code blocks the event loop; only code holding the
    GIL (C code) stops it. The worst case: a renewal was just due when the job began blocking (h),
    the job blocks its whole timeout and the watchdog's overrun past it, then the renewal still has
    to reach the store.
    """
    margin = watchdog.overrun + RENEWAL_ALLOWANCE
    return round(visibility_timeout - heartbeat_interval(visibility_timeout) - margin, 2)


class LongTimeouts:
    """Warns, once per job class, of a timeout longer than the visibility timeout allows (max_blocking_timeout)."""

    def __init__(self, max_timeout: float, visibility_timeout: float) -> None:
        self.max_timeout = max_timeout
        self.visibility_timeout = visibility_timeout
        self._warned: set[str] = set()

    def check(self, job_class: str, timeout: float) -> None:
        if timeout > self.max_timeout and job_class not in self._warned:
            self._warned.add(job_class)
            log.warning("%s has timeout %gs, above the %gs that QUEUE_VISIBILITY_TIMEOUT (%ss) allows: if one "
                        "blocks the event loop that long, the worker cannot renew the reservations of the jobs "
                        "beside it, and a second worker may run them", job_class, timeout,
                        max(self.max_timeout, 0), self.visibility_timeout)
