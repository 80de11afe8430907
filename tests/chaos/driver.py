"""The chaos driver shared by tests/chaos/test_chaos.py (bounded, CI) and bench/soak.py (`make soak`).

Jobs of mixed length are dispatched in batches while W `python main.py queue:work` processes
work them; every few seconds one worker, picked at random, is SIGKILLed and a new one started in
its place. Some jobs run longer than QUEUE_VISIBILITY_TIMEOUT (the heartbeat must keep them
reserved), some fail on purpose and succeed on a later try, some fail every try and must end in
failed_jobs. Then the kills stop, the workers drain the queue and are stopped with SIGTERM, and
tests/chaos/analysis.py judges what the jobs recorded against the kill log.

The store is whatever the environment points at (QUEUE_CONNECTION, DB_*, REDIS_*), with
QUEUE_VISIBILITY_TIMEOUT set low and `tests.jobs` among JOB_PACKAGES; workers inherit it.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bootstrap.app import create_app
from core.queue.contract import QueueConnection
from tests.chaos.analysis import ChaosReport, Kill, PlannedJob, analyze, read_runs
from tests.jobs.chaos_jobs import ChaosJob

ROOT = Path(__file__).resolve().parents[2]
QUEUE = ChaosJob.queue
MIX = (("quick", 0.75), ("long", 0.05), ("flaky", 0.10), ("doomed", 0.10))
DISPATCH_SHARE = 0.8      # jobs are dispatched over most of the chaos phase, so kills find busy workers
BATCH_EVERY = 2.0         # seconds between dispatch batches


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int = 300
    workers: int = 4
    concurrency: int = 3          # jobs at once in each worker
    seconds: float = 30           # the chaos phase: dispatching and killing (ends early once all is done)
    kill_every: float = 2.0       # mean seconds between kills (each gap drawn from 0.5x..1.5x)
    drain_timeout: float = 90     # after the kills stop, how long the survivors may take to empty the queue
    seed: int | None = None


def plan_jobs(rng: random.Random, count: int, visibility_timeout: int, log: Path) -> list[tuple[str, dict]]:
    """(kind, attributes) per job: mostly quick ones, a few longer than the visibility timeout,
    some that fail once or twice before succeeding, some that fail every try."""
    kinds: list[str] = []
    for kind, share in MIX:
        kinds += [kind] * max(1, round(count * share))
    kinds = (kinds * 2)[:count] if len(kinds) < count else kinds[:count]
    rng.shuffle(kinds)
    jobs = []
    for kind in kinds:
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
        jobs.append((kind, attrs))
    return jobs


class Workers:
    """The worker processes, started as a user starts them, each in its own process group."""

    def __init__(self, connection: str, plan: ChaosPlan, workdir: Path) -> None:
        self.argv = [sys.executable, "main.py", "queue:work", connection, "--queue", QUEUE,
                     "--concurrency", str(plan.concurrency), "--sleep", "0.2"]
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.kills: list[Kill] = []
        self.problems: list[str] = []
        self.started = 0

    def start(self) -> subprocess.Popen:
        self.started += 1
        path = self.workdir / f"worker-{self.started:03d}.log"
        with open(path, "w") as out:
            proc = subprocess.Popen(self.argv, cwd=ROOT, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    async def kill_random(self, rng: random.Random) -> None:
        victim = rng.choice(self.procs)
        self.procs.remove(victim)
        sent = time.time()
        os.killpg(victim.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.wait)
        self.kills.append(Kill(victim.pid, sent, time.time()))
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
        while time.monotonic() < until and not all(handles_sigterm(p) for p in self.procs):
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
        specs = plan_jobs(rng, plan.jobs, vt, log)
        rounds = max(1, int(plan.seconds * DISPATCH_SHARE / BATCH_EVERY))
        batches = [specs[i::rounds] for i in range(rounds)]
        conn = await app.queue.connection()
        workers = Workers(conn.name, plan, workdir)
        planned: dict[str, PlannedJob] = {}
        try:
            for _ in range(plan.workers):
                workers.start()
            end = began + plan.seconds
            next_batch, next_kill = began, began + plan.kill_every * rng.uniform(0.5, 1.5)
            while True:
                now = time.monotonic()
                if batches and now >= next_batch:
                    batch, at = batches.pop(0), time.time()
                    ids = await ChaosJob.dispatch_many([attrs for _, attrs in batch])
                    for job_id, (kind, attrs) in zip(ids, batch):
                        planned[job_id] = PlannedJob(kind, attrs["max_tries"], attrs["fail_until"],
                                                     attrs["seconds"], at)
                    next_batch += BATCH_EVERY
                if now >= next_kill:
                    await workers.kill_random(rng)
                    next_kill = time.monotonic() + plan.kill_every * rng.uniform(0.5, 1.5)
                workers.replace_exited()
                if not batches and (now >= end or await queue_left(conn) == 0):
                    break
                await asyncio.sleep(0.25)
            # The kills stop; the survivors take back the killed workers' jobs and empty the queue.
            drain_until = time.monotonic() + plan.drain_timeout
            while await queue_left(conn) and time.monotonic() < drain_until:
                workers.replace_exited()
                await asyncio.sleep(0.5)
        finally:
            await workers.stop()
        failures = {f.uuid: f.summary for f in await (await app.queue.failed_store()).all(QUEUE)}
        connection = conn.name
    left = await asyncio.to_thread(queue_size_cli, connection)
    report = analyze(store, planned, read_runs(log), failures, workers.kills, left, vt)
    report.workers, report.elapsed = plan.workers, time.monotonic() - began
    report.problems = workers.problems + report.problems
    return report


def evidence(workdir: Path, report: ChaosReport, limit: int = 60) -> str:
    """Worker log lines that mention the jobs a problem names, to read beside a failed report."""
    needles = {word.rstrip(":") for p in report.problems for word in p.split()[:1] if len(word.rstrip(":")) == 8}
    lines = [f"{path.name} {line}" for path in sorted(workdir.glob("worker-*.log"))
             for line in path.read_text(errors="replace").splitlines() if any(n in line for n in needles)]
    return "\n".join(lines[:limit])
