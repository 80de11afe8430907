"""`queue:work --processes N`: a supervisor that keeps N worker processes running.

Each worker is `python main.py queue:work` with the same options, a child process writing to the
supervisor's own stdout and stderr: job log lines reach them unchanged, with no copy through the
supervisor, and keep reaching them if the supervisor dies. The supervisor

- starts a worker again when it dies or stops (crash, SIGKILL, exit 70 from the watchdog, or
  exit 0 after --max-jobs/--max-time/--memory): at once, or after a delay that doubles while it
  keeps dying within STABLE_AFTER seconds of starting;
- with --stop-when-empty or --once, counts a worker that exits 0 as done and exits 0 when all are;
- passes every SIGTERM and SIGINT on to every worker, waits for them to finish their jobs, exits 0;
- on `queue:restart`, like a single worker, lets its workers finish their jobs and exits 0, so
  the process manager that runs it starts a fresh supervisor from the newly deployed code.

Each worker runs in its own process group, so a Ctrl-C in the terminal reaches the supervisor
only, which passes it on once (a worker counts a second SIGINT as "hurry"). On Linux the kernel
sends a worker SIGTERM when the supervisor dies (PR_SET_PDEATHSIG): a SIGKILLed supervisor leaves
no worker running unsupervised; each finishes its jobs and exits. The worker asks for that itself
at startup (follow_supervisor(), told the supervisor's pid in SUPERVISOR_PID_ENV): code run between
fork and exec (preexec_fn) is not safe in a process whose other threads may hold locks.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from core.config import project_path
from core.errors import ConfigError
from core.log import WORKER_NAME_ENV
from core.worker.loop import Worker
from core.worker.options import WorkerOptions
from core.worker.timeouts import EXIT_BLOCKED

if TYPE_CHECKING:
    from core.app import Application
    from core.queue.contract import QueueConnection

log = logging.getLogger("supervisor")
STABLE_AFTER = 10.0   # seconds: a worker that lived this long was not dying in a loop
MAX_DELAY = 30.0      # the longest wait before starting a worker that keeps dying
GIVE_UP_AFTER = 5     # --stop-when-empty/--once: quick deaths in a row before a worker is given up
RESTART_POLL = 1.0    # seconds between looks at the queue:restart signal, as the workers do
PR_SET_PDEATHSIG = 1
SUPERVISOR_PID_ENV = "QUEUE_SUPERVISOR_PID"


async def supervise(app: "Application", options: WorkerOptions, processes: int, worker_args: list[str]) -> int:
    """Run `processes` workers started with `queue:work WORKER_ARGS`; the exit code for the supervisor."""
    if processes < 1:
        raise ConfigError("--processes must be at least 1")
    Worker(app, options)     # checks the options here, once, with one clear line, rather than in N workers
    return await Supervisor(app, options, processes, worker_args).run()


class Supervisor:
    def __init__(self, app: "Application", options: WorkerOptions, processes: int, worker_args: list[str]) -> None:
        self.app = app
        self.options = options
        self.processes = processes
        self.argv = [sys.executable, str(project_path("main.py")), "queue:work", *worker_args]
        self.finite = options.stop_when_empty or options.once
        self._children: dict[int, asyncio.subprocess.Process] = {}   # by worker number, 1..N
        self._stopping = asyncio.Event()
        self._signalled = False
        self._restart_signal: str | None = None   # the queue:restart signal when the supervisor started
        self._conn: QueueConnection | None = None

    async def run(self) -> int:
        # Opening the connection here turns a wrong name or an unreachable server into one clear
        # line before any worker starts, and creates the tables once rather than N times at once.
        self._conn = await self.app.queue.connection(self.options.connection)
        # Read before any worker starts: a restart requested after this point stops the supervisor.
        self._restart_signal = await self._conn.restart_signal()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._forward, sig)
        log.info("Supervisor started: %d worker processes (pid %d)", self.processes, os.getpid())
        watcher = asyncio.create_task(self._watch_restart())
        try:
            kept = await asyncio.gather(*(self._keep(i) for i in range(1, self.processes + 1)))
        finally:
            watcher.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info("Supervisor stopped: all %d workers exited", self.processes)
        return 0 if all(kept) else 1

    async def _keep(self, index: int) -> bool:
        """Keep worker `index` running until the supervisor stops; False if it was given up."""
        quick_deaths = 0
        while not self._stopping.is_set():
            process = await self._spawn(index)
            started = time.monotonic()
            code = await process.wait()
            self._children.pop(index, None)
            what = f"Worker {index} (pid {process.pid}) {describe_exit(code)}"
            if self._stopping.is_set():
                log.info("%s", what)
                break
            if code == 0 and self.finite:
                return True
            if code == 0 and await self._restart_requested():
                log.info("%s", what)
                break
            quick_deaths = 0 if code == 0 or time.monotonic() - started >= STABLE_AFTER else quick_deaths + 1
            if self.finite and quick_deaths >= GIVE_UP_AFTER:
                log.error("%s, %d times in a row within %gs of starting; not starting it again", what,
                          quick_deaths, STABLE_AFTER)
                return False
            delay = min(MAX_DELAY, 2.0 ** (quick_deaths - 1)) if quick_deaths else 0.0
            log.log(logging.INFO if code == 0 else logging.WARNING, "%s; starting it again%s", what,
                    f" in {delay:g}s" if delay else "")
            await self._pause(delay)
        return True

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        env = {**os.environ, WORKER_NAME_ENV: f"worker {index}", SUPERVISOR_PID_ENV: str(os.getpid())}
        process = await asyncio.create_subprocess_exec(
            *self.argv, cwd=project_path("."), env=env, stdin=subprocess.DEVNULL, process_group=0)
        self._children[index] = process
        if self._stopping.is_set():   # the stop came while this worker was being started: no jobs yet
            _send(process, signal.SIGTERM)
        return process

    def _forward(self, sig: signal.Signals) -> None:
        again, self._signalled = self._signalled, True
        self._stopping.set()
        log.info("Supervisor: %s%s; passing it on to %d worker(s)%s", sig.name, " again" if again else "",
                 len(self._children), "" if again else ", which finish their running jobs")
        for process in list(self._children.values()):
            _send(process, sig)

    async def _watch_restart(self) -> None:
        while not self._stopping.is_set():
            await self._pause(RESTART_POLL)
            if not self._stopping.is_set() and await self._restart_requested():
                return

    async def _restart_requested(self) -> bool:
        """True once queue:restart was called after the supervisor started (the store's restart
        signal changed: no clock is compared); then it stops too.

        The workers see the restart themselves, except one that started after it was called (one
        being replaced at that moment), so each also gets a SIGTERM: a first stop signal only
        repeats what the restart asks (finish the running jobs, exit).
        """
        if self._stopping.is_set():
            return False
        try:
            assert self._conn is not None       # opened by run() before the checks start
            value = await self._conn.restart_signal()
        except Exception as exc:   # the workers report connection trouble; try again next time
            log.debug("restart check failed: %s", exc)
            return False
        if value == self._restart_signal:
            return False
        self._stopping.set()
        log.info("Supervisor: queue:restart; stopping %d worker(s) after their running jobs, then exiting",
                 len(self._children))
        for process in list(self._children.values()):
            _send(process, signal.SIGTERM)
        return True

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._stopping.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_BLOCKED:
        return f"exited with code {code} (a job could not be interrupted)"
    return f"exited with code {code}"


def _send(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)


def follow_supervisor() -> None:
    """In a worker a supervisor started (SUPERVISOR_PID_ENV set), first thing: have the kernel send
    SIGTERM when the supervisor dies (Linux), and exit at once if it already has. The variable is
    removed, so a process this one starts (a job's) is not taken for a worker."""
    supervisor_pid = os.environ.pop(SUPERVISOR_PID_ENV, "")
    if not supervisor_pid:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    if str(os.getppid()) != supervisor_pid:   # it died before the line above took effect
        os._exit(1)
