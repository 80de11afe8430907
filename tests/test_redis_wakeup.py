"""Dispatch-to-start latency of an idle `queue:work redis` process: milliseconds, not --sleep."""
from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

import pytest

from bootstrap.app import create_app
from core.queue.redis import WAIT_SLICE
from tests.conftest import ROOT
from tests.jobs.contract_jobs import RecordStartTime

pytestmark = pytest.mark.slow


async def start_latencies(tmp_path, sleep: float, gap: float, count: int) -> list[float]:
    """Milliseconds from each dispatch to its job starting in an idle worker with --sleep `sleep`."""
    runs = tmp_path / "runs"
    worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "redis", "--queue", "contract",
                               "--sleep", str(sleep)], cwd=ROOT, env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sent: dict[str, float] = {}
    try:
        async with create_app():
            await asyncio.sleep(1.5)                            # started, and idle
            for _ in range(count):
                started = time.time()
                sent[await RecordStartTime.dispatch(path=str(runs))] = started
                await asyncio.sleep(gap)
            until = time.monotonic() + 2 * sleep + 2
            while time.monotonic() < until and len(runs.read_text().splitlines() if runs.exists() else []) < count:
                await asyncio.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(10)
    lines = [line.split() for line in runs.read_text().splitlines()]
    return sorted((float(start) - sent[job_id]) * 1000 for job_id, _, start in lines)


@pytest.fixture
def redis_worker_env(redis_env, monkeypatch):
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")


async def test_an_idle_worker_starts_a_job_within_milliseconds(redis_worker_env, tmp_path, capsys):
    latencies = await start_latencies(tmp_path, sleep=3, gap=0.3, count=10)
    with capsys.disabled():
        print(f"\n  dispatch-to-start, idle worker: p50 {statistics.median(latencies):.1f} ms, "
              f"max {latencies[-1]:.1f} ms")
    assert len(latencies) == 10
    assert statistics.median(latencies) < 25


async def test_a_job_dispatched_after_a_quiet_spell_also_starts_at_once(redis_worker_env, tmp_path):
    """Dispatches further apart than --sleep: the worker's waits time out in between, and it must
    go straight back to blocking rather than sleep through the next dispatch.

    A worker that slept through would start each job up to --sleep (1 s) late, at a random phase:
    a median near 500 ms. Blocking again, the median is a round trip; the slowest start is allowed
    a loaded machine's hiccup, still well short of the second a sleep would cost."""
    latencies = await start_latencies(tmp_path, sleep=1.0, gap=1.2, count=6)
    assert len(latencies) == 6
    assert statistics.median(latencies) < 100 and latencies[-1] < 600, latencies


def test_an_idle_worker_stops_at_once_on_sigterm(redis_env):
    """The blocking pop is cut short by a stop: SIGTERM does not wait out the --sleep block."""
    import signal

    worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "redis", "--sleep", "30"], cwd=ROOT,
                              env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        head = read_until(worker, "Worker started", 30)          # its signal handlers are set by then
        time.sleep(0.3)                                          # and it blocks waiting for a job
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=10)
        out = head + out
    finally:
        worker.kill()
    assert worker.returncode == 0, out
    # Timed on the worker's own clock, from the stop it logged to its last line: not the interpreter's
    # start and exit, which a loaded machine stretches. The wait is never cancelled mid-call (its
    # pipelined reserve could take a job unseen): it ends with its slice (WAIT_SLICE, 1 s), not with
    # the 30 s --sleep nor a 5 s block.
    stopping, stopped = (logged_at(out, text) for text in ("Stopping (SIGTERM)", "Worker stopped (SIGTERM)"))
    assert stopped - stopping < WAIT_SLICE + 0.5, out


def logged_at(out: str, text: str) -> float:
    """The time of the worker's log line holding `text` (its "YYYY-MM-DD HH:MM:SS.mmm" prefix), in seconds."""
    from datetime import datetime

    line = next(line for line in out.splitlines() if text in line)
    return datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S.%f").timestamp()


def read_until(process: subprocess.Popen, text: str, seconds: float) -> str:
    """The process's output up to the line holding `text` (a failed test if it never comes)."""
    import selectors

    seen = ""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while text not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no {text!r} within {seconds:g}s; output so far:\n{seen}")
            line = process.stdout.readline()
            if not line:
                raise AssertionError(f"the process ended before {text!r}; output:\n{seen}")
            seen += line
    return seen
