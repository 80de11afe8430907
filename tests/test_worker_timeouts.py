"""Job code that ignores cancellation: every attempt still ends within its timeout plus a bounded grace.

`asyncio.timeout` only cancels; a job that swallows CancelledError would hold its slot (and, through
the heartbeat, its reservation) for ever. The worker stops waiting CANCEL_GRACE after the deadline,
ends the attempt as timed out through the usual release/fail path, and leaves the code behind.
Awaiting and blocking code are covered in test_worker.py; the settle path differs per store, so
these run on SQLite, MySQL/MariaDB and Redis.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest

from bootstrap.app import create_app
from core.worker import CANCEL_GRACE, Worker, WorkerOptions
from tests.conftest import ROOT, run_cli
from tests.jobs.sample_jobs import (CatchesCancelOnceJob, FailedIgnoresCancelJob, IgnoresCancelJob, RecordingJob,
                                    read_events)

SLACK = 1.5     # seconds on top of timeout + grace for a loaded machine; still far below "for ever"


def durations(out: str, status: str, job_id: str) -> list[float]:
    """The durations (s) of the job's end lines with this status, as the worker logged them."""
    return [float(ms) / 1000 for ms in re.findall(rf"{status}\s+\S+ \[{job_id}\] ([0-9.]+)ms", out)]


async def test_code_that_swallows_cancellation_is_left_behind_and_the_job_follows_its_tries(store, tmp_path, caplog):
    log = str(tmp_path / "events")
    timeout = 0.5
    # Ignores cancellation for 4 s: past the grace, so each attempt is left behind, but it ends on its own.
    job_id = await IgnoresCancelJob.dispatch(log=log, seconds=4.0)
    after = await RecordingJob.dispatch(log=log, value="after")
    worker = Worker(store.app, WorkerOptions(timeout=timeout, stop_when_empty=True, sleep=0.05))
    code = await worker.run()
    out = "\n".join(caplog.messages)

    events = [e for e in read_events(log) if e.get("job_id") == job_id]
    assert [e["event"] for e in events if e["event"] != "end"] == ["start", "start", "failed"]
    assert [e["attempts"] for e in events if e["event"] == "start"] == [1, 2]
    [first_end] = [e for e in events if e["event"] == "end" and e["attempts"] == 1]
    assert events[1]["t"] < first_end["t"]          # attempt 2 had the slot while attempt 1's code still ran

    # Each attempt ended as timed out, after the grace and within it (plus slack), not when the code ended.
    [retry] = durations(out, "RETRY", job_id)
    [fail] = durations(out, "FAIL", job_id)
    for took in (retry, fail):
        assert timeout + CANCEL_GRACE - 0.2 <= took <= timeout + CANCEL_GRACE + SLACK, out
    assert out.count("and ignored cancellation for 2s: the attempt ends now") == 2
    assert f"IgnoresCancelJob [{job_id}]: the task left behind has ended" in out

    [failed] = await (await store.app.queue.failed_store()).all()
    assert failed.uuid == job_id and failed.summary.startswith("core.worker.JobTimeoutError")
    assert "exceeded its timeout of 0.5s" in failed.summary
    assert [e["job_id"] for e in read_events(log) if e["event"] == "handle"] == [after]   # the worker went on
    sizes = await store.conn.sizes(["default"])
    assert sizes["default"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert code == 0 and len(worker.left_behind) == 0     # the code ended within the last grace


async def test_code_that_catches_cancellation_once_is_cancelled_again_after_the_grace(tmp_path, capsys):
    log = str(tmp_path / "events")
    async with create_app() as app:
        job_id = await CatchesCancelOnceJob.dispatch(log=log, seconds=60)
        failing = await FailedIgnoresCancelJob.dispatch(log=log, seconds=6)   # outlives the worker, not the test
        started = time.monotonic()
        code = await Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05)).run()
        elapsed = time.monotonic() - started
        failed = {f.uuid: f for f in await (await app.queue.failed_store()).all()}
    out = capsys.readouterr().out
    events = read_events(log)
    # Cancelled at 1 s, caught it, awaited on; left behind at 1 + grace (failed() runs), and the next
    # cancellation, a second later, ended it.
    assert [e["event"] for e in events if e["job_id"] == job_id] == ["start", "cancelled", "failed",
                                                                   "cancelled again"]
    assert "JobTimeoutError" in failed[job_id].summary
    # failed() that ignores cancellation: cut at max(1, timeout) + grace; the job is recorded all the same.
    assert [e["event"] for e in events if e["job_id"] == failing] == ["failed-start"]
    assert failed[failing].summary == "RuntimeError: handle broke"
    assert f"FailedIgnoresCancelJob [{failing}]: failed() exceeded 1s, and ignored cancellation" in out
    # Two attempts of about 1 + 2 s each, one after the other; the failed() task is still left behind at the
    # end, so the worker exits 70 (a supervisor starts a fresh one) instead of hanging.
    assert elapsed < 2 * (1 + CANCEL_GRACE) + CANCEL_GRACE + 2 * SLACK, out
    assert code == 70 and "1 job task(s) still ignore cancellation; exiting with code 70" in out


def test_left_behind_tasks_piling_up_stop_the_worker_with_exit_70(tmp_path):
    """Three attempts that ignore cancellation at once: the worker releases them and exits for a supervisor."""
    log = str(tmp_path / "events")

    async def dispatch():
        async with create_app():
            # Each retry waits a minute: the watchdog may take the three over a tick apart, and a job
            # released by the first takeover must not start again before the third stops the worker.
            return [await IgnoresCancelJob.dispatch(log=log, seconds=120, retry_after=60) for _ in range(3)]

    ids = asyncio.run(dispatch())   # ignore cancellation for 120 s: only ending the worker stops them
    started = time.monotonic()
    result = run_cli("queue:work", "--concurrency", "3", "--sleep", "0.05", "--timeout", "0.5", timeout=60)
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 70, out + result.stderr
    assert "Traceback" not in out + result.stderr
    assert out.count("and ignored cancellation for 2s") == 3, out
    assert "Stopping (3 job tasks ignore cancellation)" in out
    assert "3 job task(s) still ignore cancellation; exiting with code 70" in out
    assert elapsed < 0.5 + 2 * CANCEL_GRACE + 10      # start-up included; not the 120 s the code would run
    for job_id in ids:
        assert re.search(rf"RETRY   IgnoresCancelJob \[{job_id}\] .* retry in 60s", out), out
    # Released, not left reserved: each waits its retry delay, attempt 1 counted.
    size = json.loads(run_cli("queue:size", "--json", check=True).stdout)
    assert size["queues"]["default"] == {"pending": 0, "delayed": 3, "reserved": 0, "waiting": 0}
    assert len([e for e in read_events(log) if e["event"] == "start"]) == 3


WATCHDOG_SCRIPT = """
import asyncio, signal, sys, time
from core.worker import Watchdog, run_guarded

async def awaits():
    await asyncio.sleep(3.5)

async def stuck_in_c():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})    # as C code that never returns to Python
    time.sleep(3.5)

async def main():
    watchdog = Watchdog(hard_limit=2.0)     # above the 1 s between signals, as 15 s is
    watchdog.start()
    watchdog.watch(1, 0.1, "job 1 exceeded its timeout of 0.1s")
    await run_guarded(1, awaits if sys.argv[1] == "awaits" else stuck_in_c)
    watchdog.stop()
    print("still running")

asyncio.run(main())
"""


@pytest.mark.parametrize("code, survives", [("awaits", True), ("stuck_in_c", False)])
def test_the_watchdog_exits_only_for_code_that_keeps_the_loop_stuck(code, survives):
    """Past deadline + hard limit, code that merely awaits (the loop free) is the worker's business."""
    result = subprocess.run([sys.executable, "-c", WATCHDOG_SCRIPT, code], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    if survives:
        assert (result.returncode, result.stdout.strip()) == (0, "still running"), result.stderr
    else:
        assert result.returncode == 70 and "could not be interrupted for 2s" in result.stdout + result.stderr


GIL_SCRIPT = """
import asyncio, re
from core.worker import Watchdog, run_guarded

async def holds_the_gil():
    re.match(r"(a+)+$", "a" * 64 + "b")     # backtracking in C with the GIL held: for ages

async def main():
    watchdog = Watchdog(hard_limit=1.0)
    watchdog.start()
    watchdog.watch(1, 0.2, "job 1 exceeded its timeout of 0.2s")
    await run_guarded(1, holds_the_gil)
    print("still running")

asyncio.run(main())
"""


def test_job_code_stuck_in_c_holding_the_gil_ends_the_worker_instead_of_hanging_it():
    """The watchdog is a Python thread: C code that never lets the GIL go starved it, and the worker
    hung for good (a regex backtracking: 12 minutes, SIGTERM ignored). faulthandler's timer needs no
    GIL: it fires a little after the watchdog's own exit would have, shows where the job was stuck,
    and ends the process, so the job's reservation lapses and the next worker counts the attempt."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", GIL_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=40)
    assert result.returncode == 1 and "still running" not in result.stdout
    assert "Timeout" in result.stderr and "in holds_the_gil" in result.stderr, result.stderr
    assert time.monotonic() - started < 25       # deadline 0.2 + hard limit 1 + DEADMAN_SLACK 5 (twice at most)
