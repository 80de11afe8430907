"""The chaos driver shared by tests/chaos/test_chaos.py (bounded, CI) and bench/soak.py (`make soak`).

Jobs of mixed length are dispatched in batches while W `python main.py queue:work` processes
work them; every few seconds one worker, picked at random, is SIGKILLed and a new one started in
its place. Some jobs run longer than QUEUE_VISIBILITY_TIMEOUT (the heartbeat must keep them
reserved), some fail on purpose and succeed on a later try, some fail every try and must end in
failed_jobs. Besides the kills, each switchable in ChaosPlan:

- blockers: jobs that block their worker's event loop with time.sleep for 60-80% of their own
  timeout (BLOCKER_TIMEOUT), in clusters, beside ordinary jobs in the same worker;
- dropped answers: part of every batch is dispatched through a FaultProxy (tests/faults/proxy.py)
  that now and then forwards the pushes but drops the server's answers, then resets the
  connection, so dispatch retries a push that may have landed (workers consume directly);
- racer: `queue:retry` of every failed job and `queue:clear` (their core functions) at random moments;
- cuts: the failed-job store cut while jobs fail. On MySQL and PostgreSQL the workers reach the whole store
  through a proxy that drops answers a moment, then cuts; on Redis the failed store is MySQL behind
  a proxy, cut for about a visibility timeout, and the queue itself is cut briefly the same way;
  SQLite cannot be cut, so its write lock is held for a while instead.

Then the faults stop, the workers drain the queue and are stopped with SIGTERM, and
tests/chaos/analysis.py judges what the jobs recorded against the kill log, the retries and clears.

The store is whatever the environment points at (QUEUE_CONNECTION, DB_*, REDIS_*), with
QUEUE_VISIBILITY_TIMEOUT set low and `tests.jobs` among JOB_PACKAGES; workers inherit it (with
DB_PORT/REDIS_PORT pointed at the proxies). Redis runs need DB_CONNECTION=mysql for the cuts.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from bootstrap.app import create_app
from core.app import Application, set_current
from core.dispatch import dispatch_many
from core.queue.contract import QueueConnection
from core.queue.retry import retry_failed
from tests.chaos.analysis import (ChaosReport, Clear, Kill, PlannedJob, Retry, analyze, read_failed_calls,
                                  read_runs)
from tests.chaos.results import KEEP_SECONDS, judge_results
from tests.faults.proxy import FaultProxy
from tests.jobs.chaos_jobs import ChaosJob
from tests.jobs.sample_jobs import read_events

ROOT = Path(__file__).resolve().parents[2]
QUEUE = ChaosJob.queue
MIX = (("quick", 0.75), ("long", 0.05), ("flaky", 0.10), ("doomed", 0.10))
DISPATCH_SHARE = 0.8      # jobs are dispatched over most of the chaos phase, so kills find busy workers
BATCH_EVERY = 2.0         # seconds between dispatch batches
BLOCKER_TIMEOUT = 2.0     # a blocker's own timeout: well below the visibility timeout the chaos runs use
RACER_SPAN = (0.1, 0.7)   # queue:retry and queue:clear at random moments in this share of the chaos phase


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int = 300
    workers: int = 4
    concurrency: int = 3          # jobs at once in each worker
    seconds: float = 30           # the chaos phase: dispatching and killing (ends early once all is done)
    kill_every: float = 2.0       # mean seconds between kills (each gap drawn from 0.5x..1.5x)
    drain_timeout: float = 90     # after the kills stop, how long the survivors may take to empty the queue
    seed: int | None = None
    blockers: float = 0.0         # share of jobs that block the event loop (0: none)
    dropped_answers: float = 0.0  # share of jobs dispatched through the answer-dropping proxy (0: none)
    retry_every: float = 0.0      # mean seconds between queue:retry all calls in the chaos phase (0: none)
    clears: int = 0               # queue:clear calls in the chaos phase
    cut_every: float = 0.0        # mean seconds between cuts of the failed-job store (0: none)
    keep_share: float = 0.0       # share of jobs that keep their result (SPEC 11), judged by results.py

    @classmethod
    def widened(cls, **changes) -> "ChaosPlan":
        """Every fault class on, at the rates the CI test uses."""
        return replace(cls(concurrency=4, blockers=0.1, dropped_answers=0.3, retry_every=0.5, clears=2, cut_every=5.0,
                           keep_share=0.5), **changes)


def plan_jobs(rng: random.Random, count: int, visibility_timeout: int, log: Path,
              blockers: float = 0.0, keep_share: float = 0.0) -> list[tuple[str, dict]]:
    """(kind, attributes) per job: mostly quick ones, a few longer than the visibility timeout,
    some that fail once or twice before succeeding, some that fail every try; blockers in
    clusters of two or three, so one worker often holds several."""
    kinds: list[str] = []
    for kind, share in MIX:
        kinds += [kind] * max(1, round(count * share))
    kinds = (kinds * 2)[:count] if len(kinds) < count else kinds[:count]
    rng.shuffle(kinds)
    for _ in range(round(count * blockers / 2.5)):
        at, size = rng.randrange(len(kinds)), rng.choice((2, 3, 3))
        kinds[at:at + size] = ["blocker"] * len(kinds[at:at + size])
    jobs = []
    for kind in kinds[:count]:
        attrs = {"log": str(log), "seconds": round(rng.uniform(0.02, 0.3), 3), "max_tries": 3, "fail_until": 0}
        if kind == "long":
            # Several kills may cut the same long job, so it gets more tries than the others.
            attrs.update(seconds=round(rng.uniform(visibility_timeout + 0.5, visibility_timeout + 2.0), 3),
                         max_tries=5)
        elif kind == "flaky":
            attrs["fail_until"] = rng.choice((2, 3))        # succeeds on its second or third try
        elif kind == "doomed":
            attrs["fail_until"] = attrs["max_tries"] + 1
        attrs["timeout"] = attrs["seconds"] + 10
        if kind == "blocker":
            attrs.update(seconds=0.02, block=round(rng.uniform(0.6, 0.8) * BLOCKER_TIMEOUT, 3),
                         timeout=BLOCKER_TIMEOUT)
        if rng.random() < keep_share:
            attrs["keep_result"] = KEEP_SECONDS
        jobs.append((kind, attrs))
    return jobs


class Workers:
    """The worker processes, started as a user starts them, each in its own process group."""

    def __init__(self, connection: str, plan: ChaosPlan, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "main.py", "queue:work", connection, "--queue", QUEUE,
                     "--concurrency", str(plan.concurrency), "--sleep", "0.2"]
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.procs: list[subprocess.Popen] = []
        self.kills: list[Kill] = []
        self.problems: list[str] = []
        self.started = 0
        self.owed = 0                 # killed workers not replaced yet (their store was cut)

    def start(self) -> subprocess.Popen:
        self.started += 1
        path = self.workdir / f"worker-{self.started:03d}.log"
        with open(path, "w") as out:
            proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    async def kill_random(self, rng: random.Random, replace_now: Callable[[], bool] = lambda: True) -> None:
        """SIGKILL one worker; start another in its place now, or (its store being cut, where it
        could not start) once start_owed() is called. `replace_now` is asked once the victim is gone:
        a cut may have begun while this waited for it (asked before, a replacement started into a
        cut and exited, 'Connection refused', and so did the next ones replace_exited() started)."""
        victim = rng.choice(self.procs)
        self.procs.remove(victim)
        sent = time.time()
        os.killpg(victim.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.wait)
        self.kills.append(Kill(victim.pid, sent, time.time()))
        if replace_now():       # no await between this and start(): a cut waits for a starting worker
            self.start()
        else:
            self.owed += 1

    def starting(self) -> bool:
        """Whether a worker is still starting: connecting to its store, before it handles SIGTERM.
        Asked of the process, not of the clock: on a loaded machine a start takes seconds."""
        return not all(handles_sigterm(p) for p in self.procs)

    def start_owed(self) -> None:
        while self.owed:
            self.owed -= 1
            self.start()

    def replace_exited(self) -> None:
        """A worker that exits without being killed or told to stop is a failure; start another."""
        for proc in [p for p in self.procs if p.poll() is not None]:
            self.procs.remove(proc)
            self.problems.append(f"worker {proc.pid} exited by itself with code {proc.returncode}")
            self.start()

    async def stop(self) -> None:
        """SIGTERM, as a supervisor stops workers: each finishes its jobs and exits 0."""
        # A replacement started a moment ago may still be importing, before it handles signals.
        until = time.monotonic() + 30
        while time.monotonic() < until and self.starting():
            await asyncio.sleep(0.1)
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                code = await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = await asyncio.to_thread(proc.wait)
                self.problems.append(f"worker {proc.pid} did not stop within 60s of SIGTERM")
            if code != 0:
                self.problems.append(f"worker {proc.pid} exited {code} after SIGTERM")
        self.procs = []


def handles_sigterm(proc: subprocess.Popen) -> bool:
    """Whether the process has its SIGTERM handler installed (or is gone): Linux's /proc says."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    except (OSError, StopIteration):
        return True
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1))) or proc.poll() is not None


@dataclass
class Faults:
    """The proxies and what was done through them; `counts` goes into the report's figures line."""
    store: str
    plan: ChaosPlan
    rng: random.Random
    vt: int
    dispatch_proxy: FaultProxy | None = None    # before the queue store, for the proxied dispatches
    store_proxy: FaultProxy | None = None       # MySQL (whole store, or Redis's failed store), for workers
    queue_proxy: FaultProxy | None = None       # Redis itself, for workers (Redis runs)
    sqlite_path: str = ""
    cutting: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def open(self, config) -> dict[str, str]:
        """Start the proxies this plan needs; returns the environment changes for the workers."""
        env: dict[str, str] = {}
        if self.plan.dropped_answers and self.store in ("mysql", "pgsql", "redis"):
            port = config.redis.port if self.store == "redis" else config.database.port
            host = config.redis.host if self.store == "redis" else config.database.host
            self.dispatch_proxy = FaultProxy(port, host).start()
        if self.plan.cut_every:
            if self.store == "sqlite":
                self.sqlite_path = config.database.database
            else:
                if config.database.driver not in ("mysql", "pgsql"):
                    raise RuntimeError("the failed-store cuts need a database server (the failed store of a "
                                       "Redis run is the database)")
                self.store_proxy = FaultProxy(config.database.port, config.database.host).start()
                env["DB_PORT"] = str(self.store_proxy.port)
            if self.store == "redis":
                self.queue_proxy = FaultProxy(config.redis.port, config.redis.host).start()
                env["REDIS_PORT"] = str(self.queue_proxy.port)
        return env

    def proxied_app(self, app: Application) -> Application | None:
        """An application like `app` whose queue store is reached through the dispatch proxy."""
        if self.dispatch_proxy is None:
            return None
        c, port = app.config, self.dispatch_proxy.port
        config = replace(c, redis=replace(c.redis, port=port)) if self.store == "redis" else \
            replace(c, database=replace(c.database, port=port))
        return Application(config)

    def restore(self) -> None:
        for proxy in (self.dispatch_proxy, self.store_proxy, self.queue_proxy):
            if proxy is not None and proxy.mode != "up":
                proxy.restore()

    def close(self) -> None:
        for proxy in (self.dispatch_proxy, self.store_proxy, self.queue_proxy):
            if proxy is not None:
                proxy.close()

    async def drop_answers(self, stop: asyncio.Event) -> None:
        """Now and then the proxied dispatches' pushes reach the store but their answers do not."""
        proxy = self.dispatch_proxy
        while proxy is not None and not await _stopped(stop, self.rng.uniform(0.3, 1.0)):
            proxy.lose_replies()
            await asyncio.sleep(self.rng.uniform(0.1, 0.6))
            proxy.cut()                                 # the stream is out of step: reset it
            await asyncio.sleep(self.rng.uniform(0.05, 0.15))
            proxy.restore()
            self.count("answer drops")

    async def cut_stores(self, stop: asyncio.Event, workers: Workers) -> None:
        """The failed-job store (and on Redis the queue) cut now and then while jobs fail."""
        every, turn = self.plan.cut_every, 0
        while every and not await _stopped(stop, every * self.rng.uniform(0.5, 1.5)):
            if self.sqlite_path:
                self.count("write locks")
                await asyncio.to_thread(hold_write_lock, self.sqlite_path, self.rng.uniform(0.2, 0.45) * self.vt)
                continue
            # A worker starting while its store is cut exits: none may be starting as the cut begins,
            # and those killed during it are replaced once the store is back (as a supervisor would).
            self.cutting, turn = True, turn + 1
            try:
                while workers.starting() and not stop.is_set():
                    await asyncio.sleep(0.2)
                if stop.is_set():
                    return
                if self.store == "redis" and turn % 2 == 0:
                    self.count("queue cuts")
                    await self._cut(self.queue_proxy, self.rng.uniform(0.3, 1.0))
                elif self.store == "redis":
                    # Long enough, now and then, that a worker recording a failure gives up and the job comes back.
                    self.count("failed-store cuts")
                    await self._cut(self.store_proxy, self.rng.uniform(0.5, 1.5) * self.vt)
                else:
                    # The whole store: well short of a visibility timeout, so the reservations held survive it.
                    self.count("store cuts")
                    await self._cut(self.store_proxy, self.rng.uniform(0.2, 0.35) * self.vt)
            finally:
                self.cutting = False
                workers.start_owed()

    async def _cut(self, proxy: FaultProxy, seconds: float, lose_first: bool = True) -> None:
        if lose_first:          # commands in flight land, their answers do not
            proxy.lose_replies()
            await asyncio.sleep(self.rng.uniform(0.05, 0.2))
        proxy.cut()
        await asyncio.sleep(seconds)
        proxy.restore()


def hold_write_lock(path: str, seconds: float) -> None:
    """SQLite's write lock, held as a long transaction of another process would hold it."""
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` is set; returns whether it is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True


class Racer:
    """`queue:retry all` and `queue:clear` on the chaos queue at random moments, as a user would.
    queue:retry comes often: a worker failing a job is between writing its failed row and deleting
    the job for a moment only, and a retry must fall into that moment to race it."""

    def __init__(self, app: Application, conn: QueueConnection, plan: ChaosPlan, rng: random.Random) -> None:
        self.app, self.conn = app, conn
        lo, hi = RACER_SPAN
        retries, at = [], lo * plan.seconds
        while plan.retry_every and (at := at + plan.retry_every * rng.uniform(0.1, 1.9)) < hi * plan.seconds:
            retries.append((at, "retry"))
        self.schedule = sorted(retries + [(rng.uniform(lo, hi) * plan.seconds, "clear") for _ in range(plan.clears)])
        self.retries: list[Retry] = []
        self.clears: list[Clear] = []

    async def run(self, began: float, stop: asyncio.Event) -> None:
        for at, action in self.schedule:
            if await _stopped(stop, max(0.0, began + at - time.monotonic())):
                return
            if action == "retry":
                # queue:retry with the ids queue:failed shows: a job's history splits into generations
                # at the moment its row was seen, after everything it did before and before its next run.
                rows = await (await self.app.queue.failed_store()).all(QUEUE)
                when = time.time()
                result = await retry_failed(self.app, [row.uuid for row in rows], QUEUE) if rows else None
                retried = frozenset(job.uuid for job in result.retried) if result else frozenset()
                # The row each took back: the judge weighs a retried generation by it, as a row left at the end.
                self.retries.append(Retry(when, retried, {job.uuid: job.summary for job in result.retried}
                                          if result else {}))
            else:
                self.clears.append(Clear(time.time(), await self.conn.clear(QUEUE)))


class Dispatcher:
    """Dispatches the batches; with dropped answers on, part of each goes through the proxy, spread
    over the time to the next batch so drops find pushes in flight."""

    def __init__(self, app: Application, proxied: Application | None, plan: ChaosPlan, rng: random.Random) -> None:
        self.app, self.proxied, self.plan, self.rng = app, proxied, plan, rng
        self.planned: dict[str, PlannedJob] = {}
        self.problems: list[str] = []
        self.proxied_count = 0

    async def run(self, batches: list[list[tuple[str, dict]]], stop: asyncio.Event) -> None:
        for batch in batches:
            started = time.monotonic()
            share = self.plan.dropped_answers if self.proxied is not None else 0.0
            # Blockers go direct, so their clusters stay together in the queue.
            via_proxy = [item for item in batch if item[0] != "blocker" and self.rng.random() < share]
            direct = [item for item in batch if not any(item is p for p in via_proxy)]
            await self._dispatch(self.app, direct, False)
            for i in range(0, len(via_proxy), 2):
                await self._dispatch(self.proxied, via_proxy[i:i + 2], True)
                await asyncio.sleep(BATCH_EVERY * 0.8 * 2 / max(1, len(via_proxy)))
            if await _stopped(stop, max(0.0, started + BATCH_EVERY - time.monotonic())):
                return

    async def _dispatch(self, app: Application, items: list[tuple[str, dict]], proxied: bool) -> None:
        if not items:
            return
        jobs = [ChaosJob.make(**attrs) for _, attrs in items]
        at = time.time()
        set_current(app)               # dispatch pushes through the current application's connections
        try:
            await dispatch_many(jobs)
        except Exception as exc:
            self.problems.append(f"dispatch of {len(jobs)} job(s){' through the proxy' if proxied else ''} "
                                 f"raised {type(exc).__name__}: {exc}")
        finally:
            set_current(self.app)
        self.proxied_count += len(jobs) if proxied else 0
        for job, (kind, attrs) in zip(jobs, items):
            self.planned[job.job_id] = PlannedJob(kind, attrs["max_tries"], attrs["fail_until"], attrs["seconds"], at,
                                                  attrs.get("block", 0.0), proxied, "keep_result" in attrs)


async def queue_left(conn: QueueConnection) -> int:
    size = (await conn.sizes([QUEUE]))[QUEUE]
    return size.pending + size.delayed + size.reserved


def queue_size_cli(connection: str) -> int:
    """What `python main.py queue:size` shows a user: pending + delayed + reserved on the chaos queue."""
    result = subprocess.run([sys.executable, "main.py", "queue:size", connection, "--queue", QUEUE, "--json"],
                            cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"queue:size exited {result.returncode}: {result.stdout}{result.stderr}")
    return sum(json.loads(result.stdout)["queues"][QUEUE].values())


async def run_chaos(store: str, plan: ChaosPlan, workdir: Path) -> ChaosReport:
    """Run one chaos scenario on the store the environment points at; returns the judged report."""
    rng = random.Random(plan.seed)
    log = workdir / "runs.log"
    began = time.monotonic()
    async with create_app() as app:
        vt = app.config.queue.visibility_timeout
        specs = plan_jobs(rng, plan.jobs, vt, log, plan.blockers, plan.keep_share)
        rounds = max(1, int(plan.seconds * DISPATCH_SHARE / BATCH_EVERY))
        size = -(-len(specs) // rounds)
        batches = [specs[i:i + size] for i in range(0, len(specs), size)]   # in order: blocker clusters stay whole
        conn = await app.queue.connection()
        faults = Faults(store, plan, random.Random(rng.random()), vt)
        workers = Workers(conn.name, plan, workdir, {**faults.open(app.config), **listening(workdir)})
        proxied = faults.proxied_app(app)
        dispatcher = Dispatcher(app, proxied, plan, random.Random(rng.random()))
        racer = Racer(app, conn, plan, random.Random(rng.random()))
        stop, dispatched = asyncio.Event(), asyncio.Event()
        tasks: list[asyncio.Task] = []
        try:
            for _ in range(plan.workers):
                workers.start()
            tasks = [asyncio.create_task(dispatcher.run(batches, stop)), asyncio.create_task(racer.run(began, stop)),
                     asyncio.create_task(faults.drop_answers(stop)),
                     asyncio.create_task(faults.cut_stores(stop, workers))]
            tasks[0].add_done_callback(lambda _: dispatched.set())
            end = began + plan.seconds
            next_kill = began + plan.kill_every * rng.uniform(0.5, 1.5)
            while True:
                now = time.monotonic()
                if now >= next_kill and (len(workers.procs) > 1 or not faults.cutting):
                    await workers.kill_random(rng, replace_now=lambda: not faults.cutting)
                    next_kill = time.monotonic() + plan.kill_every * rng.uniform(0.5, 1.5)
                workers.replace_exited()
                if dispatched.is_set() and (now >= end or await queue_left(conn) == 0):
                    break
                await asyncio.sleep(0.25)
            # The faults stop; the survivors take back the killed workers' jobs and empty the queue.
            stop.set()
            await asyncio.gather(*tasks)
            faults.restore()
            workers.start_owed()
            drain_until = time.monotonic() + plan.drain_timeout
            while await queue_left(conn) and time.monotonic() < drain_until:
                workers.replace_exited()
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            faults.restore()
            await workers.stop()
            if proxied is not None:
                await proxied.close()
            faults.close()
        failures = {f.uuid: f.summary for f in await (await app.queue.failed_store()).all(QUEUE)}
        connection = conn.name
        kept, unrecorded, kept_problems = await judge_results(conn, QUEUE, dispatcher.planned, read_runs(log), failures)
    left = await asyncio.to_thread(queue_size_cli, connection)
    record(workdir, dispatcher.planned, workers.kills, racer.retries, racer.clears)
    report = analyze(store, dispatcher.planned, read_runs(log), failures, workers.kills, left, vt,
                     read_failed_calls(log), racer.retries, racer.clears)
    blockers = sum(1 for p in dispatcher.planned.values() if p.kind == "blocker")
    report.faults = {**({"blockers": blockers} if blockers else {}),
                     **({"dispatched via proxy": dispatcher.proxied_count} if dispatcher.proxied_count else {}),
                     **faults.counts,
                     **({f"queue:retry ({report.retried} jobs)": len(racer.retries)} if racer.retries else {}),
                     **({f"queue:clear ({report.cleared} jobs)": len(racer.clears)} if racer.clears else {})}
    report.workers, report.elapsed = plan.workers, time.monotonic() - began
    if kept:
        report.faults["results kept"] = kept
    if unrecorded > report.cleared:
        kept_problems.append(f"{unrecorded} succeeded job(s) keeping a result have no record, but queue:clear "
                             f"accounts for only {report.cleared}")
    report.problems = workers.problems + dispatcher.problems + report.problems + kept_problems + \
        unfounded_events(workdir, failures, racer.retries)
    return report


def listening(workdir: Path) -> dict[str, str]:
    """Workers run with a listener on (SPEC 10): it records every event to events.log, and must
    change nothing the judge sees."""
    return {"APP_LISTENERS": "tests.recording_listeners", "EVENTS_LOG": str(workdir / "events.log"),
            "EVENTS_MISBEHAVE": ""}


def unfounded_events(workdir: Path, failures: dict[str, str], retries: list[Retry]) -> list[str]:
    """Events reporting what did not happen. Events are at most once (a kill loses some), so only
    what was heard is checked: a JobFailed for a job with no failed_jobs row that queue:retry did
    not explain; a JobProcessed for a job none of whose runs succeeded."""
    heard = read_events(workdir / "events.log")
    retried = {uuid for r in retries for uuid in r.uuids}
    succeeded = {job_id for job_id, runs in read_runs(workdir / "runs.log").items()
                 if any(run.outcome == "ok" for run in runs)}
    problems = [f"{e['job_id'][:8]}: JobFailed heard, but no failed_jobs row and no queue:retry explains it"
                for e in heard if e["event"] == "JobFailed" and e["job_id"] not in failures
                and e["job_id"] not in retried]
    problems += [f"{e['job_id'][:8]}: JobProcessed heard, but none of its runs succeeded"
                 for e in heard if e["event"] == "JobProcessed" and e["job_id"] not in succeeded]
    if not heard:
        problems.append("the workers' listener heard no event at all")
    return problems


def record(workdir: Path, planned: dict[str, PlannedJob], kills: list[Kill], retries: list[Retry],
           clears: list[Clear]) -> None:
    """What the driver did, beside the jobs' own records (runs.log) and the worker logs, to read after a run."""
    data = {"planned": {job_id: vars(p) for job_id, p in planned.items()}, "kills": [vars(k) for k in kills],
            "retries": [{"at": r.at, "uuids": sorted(r.uuids), "rows": r.rows} for r in retries],
            "clears": [vars(c) for c in clears]}
    (workdir / "chaos.json").write_text(json.dumps(data, indent=1))


def evidence(workdir: Path, report: ChaosReport, limit: int = 60) -> str:
    """Worker log lines that mention the jobs a problem names, to read beside a failed report."""
    needles = {word.rstrip(":") for p in report.problems for word in p.split()[:1] if len(word.rstrip(":")) == 8}
    lines = [f"{path.name} {line}" for path in sorted(workdir.glob("worker-*.log"))
             for line in path.read_text(errors="replace").splitlines() if any(n in line for n in needles)]
    return "\n".join(lines[:limit])
