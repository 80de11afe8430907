"""Timeouts for job code that blocks the event loop.

`asyncio.timeout` cancels a job that awaits, but cannot stop one that blocks the loop
(`time.sleep`, a busy loop, a blocking socket). A watchdog thread notices a job still running
past its deadline and sends the worker's main thread a signal; the handler looks at the
interrupted stack and, only if that job's `run_guarded` frame is on it, raises JobTimeoutError
right where the job is blocked. The signal is repeated each second while the job goes on; a job
stuck in C code that never returns to Python is ended by exiting the process after `hard_limit`
seconds, so its reservation expires and the attempt is counted rather than hanging forever.
Cost: one thread waking every 100 ms; nothing on the job's own path but a dict update.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("worker")
SIGNAL = signal.SIGUSR2
EXIT_BLOCKED = 70


class JobTimeoutError(TimeoutError):
    """A job attempt ran past its timeout."""


@dataclass
class _Watch:
    deadline: float
    message: str
    signalled_at: float = 0.0


async def run_guarded(watch_key: int, fn: Callable[[], Awaitable[Any]]) -> Any:
    """The frame the signal handler looks for: job code running under it may be interrupted."""
    return await fn()


class Watchdog:
    def __init__(self, grace: float = 0.25, hard_limit: float = 15.0) -> None:
        self.grace, self.hard_limit = grace, hard_limit
        self._watches: dict[int, _Watch] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("watchdog disabled: the worker is not on the main thread")
            return
        self._main = threading.main_thread().ident
        self._previous = signal.signal(SIGNAL, self._on_signal)
        self._thread = threading.Thread(target=self._watch_loop, name="job-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            signal.signal(SIGNAL, self._previous or signal.SIG_DFL)
            self._thread = None

    def watch(self, key: int, timeout: float, message: str) -> None:
        with self._lock:
            self._watches[key] = _Watch(time.monotonic() + timeout, message)

    def unwatch(self, key: int) -> None:
        with self._lock:
            self._watches.pop(key, None)

    def _watch_loop(self) -> None:
        while not self._stopped.wait(0.1):
            now = time.monotonic()
            with self._lock:
                overdue = [w for w in self._watches.values() if now > w.deadline + self.grace]
            for watch in overdue:
                if now > watch.deadline + self.hard_limit:
                    log.critical("%s, and could not be interrupted for %.0fs; exiting so the job is retried "
                                 "or failed by the next worker", watch.message, self.hard_limit)
                    logging.shutdown()
                    os._exit(EXIT_BLOCKED)
                if now - watch.signalled_at >= 1.0:
                    watch.signalled_at = now
                    signal.pthread_kill(self._main, SIGNAL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        while frame is not None:
            if frame.f_code is run_guarded.__code__:
                with self._lock:
                    watch = self._watches.get(frame.f_locals.get("watch_key"))
                if watch is not None and now > watch.deadline:
                    raise JobTimeoutError(watch.message)
            frame = frame.f_back
