"""`queue:work --processes N` as a user runs it: a supervisor of real worker processes, on Redis."""
from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bootstrap.app import create_app
from core.worker import supervisor
from core.worker import WorkerOptions
from tests.conftest import ROOT, run_cli
from tests.jobs.sample_jobs import SleepyJob, read_events

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def on_redis(redis_env, monkeypatch):
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")


def dispatch_sleepy(log: str, count: int, seconds: float) -> list[str]:
    """SleepyJob records start and end with its worker's pid; --tries/--timeout on the worker override its 1/1s."""
    async def go() -> list[str]:
        async with create_app():
            return [await SleepyJob.dispatch(log=log, seconds=seconds) for _ in range(count)]
    return asyncio.run(go())


class Supervised:
    """`python main.py queue:work ARGS` in the background, its output (and its workers') in a file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.path = tmp_path / "supervisor.out"
        with open(self.path, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "main.py", "queue:work", *args], cwd=ROOT,
                                         env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self) -> str:
        return self.path.read_text()

    def worker_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"\] Worker started: .*\(pid (\d+)\)", self.output())]

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout}s:\n{self.output()}") from None

    def kill_all(self) -> None:
        """Whatever is still running of what this test started: the supervisor and its workers, by pid."""
        for pid in [self.proc.pid, *self.worker_pids()]:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent (or an init) to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def events(log: str, kind: str) -> list[dict]:
    return [e for e in read_events(log) if e["event"] == kind]


def test_processes_must_be_at_least_one_and_help_explains_it():
    for bad in ("0", "-2"):
        result = run_cli("queue:work", "--processes", bad)
        assert result.returncode == 1
        assert result.stderr.strip() == "--processes must be at least 1" and "Traceback" not in result.stdout
    assert "--processes" in run_cli("queue:work", "--help", check=True).stdout


def test_two_workers_share_the_jobs_and_stop_when_empty(tmp_path):
    log = str(tmp_path / "events")
    ids = dispatch_sleepy(log, 30, 0.2)
    result = run_cli("queue:work", "--processes", "2", "--stop-when-empty", "--timeout", "10", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    ends = events(log, "end")
    assert sorted(e["job_id"] for e in ends) == sorted(ids)              # every job, each exactly once
    pids = {e["pid"] for e in events(log, "start")}
    assert len(pids) == 2 and os.getpid() not in pids, result.stdout
    out = result.stdout
    assert "[worker 1] DONE    SleepyJob" in out and "[worker 2] DONE    SleepyJob" in out
    assert out.rstrip().endswith("Supervisor stopped: all 2 workers exited") and "starting it again" not in out


def test_once_runs_one_job_per_worker_and_exits(tmp_path):
    log = str(tmp_path / "events")
    dispatch_sleepy(log, 3, 0)
    result = run_cli("queue:work", "--processes", "2", "--once", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(events(log, "end")) == 2


async def test_a_worker_that_keeps_dying_at_start_is_retried_then_given_up_in_a_finite_run(monkeypatch, capsys):
    monkeypatch.setattr(supervisor, "MAX_DELAY", 0.05)
    async with create_app() as app:
        sup = supervisor.Supervisor(app, WorkerOptions(stop_when_empty=True), 2, [])
        # Worker 1 drains an empty queue at once; worker 2 dies with code 3 every time it starts.
        code = "import os, sys; sys.exit(3 if os.environ['QUEUE_WORKER_NAME'] == 'worker 2' else 0)"
        sup.argv = [sys.executable, "-c", code]
        assert await sup.run() == 1
    out = capsys.readouterr().out
    assert len(re.findall(r"Worker 2 \(pid \d+\) exited with code 3; starting it again in 0.05s", out)) == 4, out
    assert re.search(r"Worker 2 \(pid \d+\) exited with code 3, 5 times in a row within 10s of starting; "
                     r"not starting it again", out)
    assert "Worker 1" not in out


def test_a_killed_worker_is_replaced_and_every_job_still_finishes(tmp_path):
    log = str(tmp_path / "events")
    ids = dispatch_sleepy(log, 30, 0.3)
    # A short visibility timeout so the killed worker's job comes back within the test.
    sup = Supervised(tmp_path, "--processes", "2", "--tries", "3", "--timeout", "1", "--sleep", "0.2",
                     env={"QUEUE_VISIBILITY_TIMEOUT": "3"})
    try:
        wait_for(lambda: len({e["pid"] for e in events(log, "start")}) == 2, 30, "both workers running jobs")
        starts = events(log, "start")
        victim = starts[-1]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len({e["job_id"] for e in events(log, "end")}) == len(ids), 60,
                 "every job finished")
        started = sup.worker_pids()
        assert len(started) == 3 and victim in started, sup.output()
        assert re.search(rf"Worker \d \(pid {victim}\) was killed by SIGKILL; starting it again", sup.output())
        assert started[-1] in {e["pid"] for e in events(log, "start")}          # the new worker takes jobs
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0, sup.output()
    finally:
        sup.kill_all()
    ends = Counter(e["job_id"] for e in events(log, "end"))
    assert set(ends) == set(ids) and max(ends.values()) == 1
    # Only a job the killed worker was running may have started twice.
    twice = [job for job, n in Counter(e["job_id"] for e in events(log, "start")).items() if n > 1]
    assert all(any(e["job_id"] == job and e["pid"] == victim for e in events(log, "start")) for job in twice)


def test_sigterm_to_the_supervisor_lets_running_jobs_finish_and_exits_zero(tmp_path):
    log = str(tmp_path / "events")
    ids = dispatch_sleepy(log, 2, 2)
    sup = Supervised(tmp_path, "--processes", "2", "--timeout", "20", "--sleep", "0.2")
    try:
        wait_for(lambda: len(events(log, "start")) == 2, 30, "both jobs running")
        sup.proc.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0, sup.output()
    finally:
        sup.kill_all()
    out = sup.output()
    assert sorted(e["job_id"] for e in events(log, "end")) == sorted(ids), out
    assert len({e["pid"] for e in events(log, "start")}) == 2
    assert "Supervisor: SIGTERM; passing it on to 2 worker(s)" in out and "starting it again" not in out
    assert out.count("] Worker stopped (SIGTERM)") == 2
    assert not any(alive(pid) for pid in sup.worker_pids())


def test_sigint_is_passed_on_and_so_is_a_second_one(tmp_path):
    """What a worker does with a second SIGINT is its own business; the supervisor must pass it on."""
    log = str(tmp_path / "events")
    dispatch_sleepy(log, 2, 3)
    sup = Supervised(tmp_path, "--processes", "2", "--timeout", "20", "--sleep", "0.2")
    try:
        wait_for(lambda: len(events(log, "start")) == 2, 30, "both jobs running")
        sup.proc.send_signal(signal.SIGINT)
        wait_for(lambda: sup.output().count("] Stopping (SIGINT)") == 2, 15, "both workers stopping")
        sup.proc.send_signal(signal.SIGINT)
        assert sup.wait(30) == 0, sup.output()
    finally:
        sup.kill_all()
    assert "Supervisor: SIGINT again; passing it on to 2 worker(s)" in sup.output()


def test_queue_restart_lets_workers_finish_and_the_supervisor_exits(tmp_path):
    log = str(tmp_path / "events")
    job_id = dispatch_sleepy(log, 1, 2)[0]
    sup = Supervised(tmp_path, "--processes", "2", "--timeout", "20", "--sleep", "0.2")
    try:
        wait_for(lambda: len(events(log, "start")) == 1, 30, "the job running")
        wait_for(lambda: len(sup.worker_pids()) == 2, 30, "both workers started")
        assert "Restart signal sent" in run_cli("queue:restart", check=True).stdout
        assert sup.wait(30) == 0, sup.output()
    finally:
        sup.kill_all()
    out = sup.output()
    assert [e["job_id"] for e in events(log, "end")] == [job_id], out
    # A worker may see the restart itself before the supervisor's once-a-second check does.
    assert re.search(r"Supervisor: queue:restart; stopping [12] worker\(s\) after their running jobs, then exiting",
                     out), out
    assert out.count("] Worker stopped (") == 2 and "Supervisor stopped: all 2 workers exited" in out
    assert len(sup.worker_pids()) == 2 and "starting it again" not in out


def test_workers_of_a_killed_supervisor_finish_their_jobs_and_exit(tmp_path):
    log = str(tmp_path / "events")
    job_id = dispatch_sleepy(log, 1, 2)[0]
    sup = Supervised(tmp_path, "--processes", "2", "--timeout", "20", "--sleep", "0.2")
    try:
        wait_for(lambda: len(events(log, "start")) == 1 and len(sup.worker_pids()) == 2, 30, "the job running")
        workers = sup.worker_pids()
        sup.proc.send_signal(signal.SIGKILL)
        sup.proc.wait(10)
        wait_for(lambda: not any(alive(pid) for pid in workers), 30, "workers exit")
    finally:
        sup.kill_all()
    assert [e["job_id"] for e in events(log, "end")] == [job_id], sup.output()
    assert sup.output().count("Worker stopped (SIGTERM)") == 2
