"""Scenarios (h) and (i): what wake-up (SPEC 17) does for an idle worker, and what it costs dispatch.

(h) Idle latency on SQLite, MySQL, PostgreSQL, and Redis as the reference (as shipped only: the
    switch is the databases'): one worker idle on an empty queue, `queue:work` with its defaults
    (--sleep 1, --concurrency 1); one process dispatches a ProbeJob every 100-200 ms (a random gap,
    so the dispatches fall at random phases of the worker's poll) IDLE_PROBES times, without
    waiting for the jobs; each job records its dispatch-to-start time (bench.probe). p50 / p99.
    A worker that polls every second shows about 500 ms at p50: the "from 1 s" of issue 14.
(i) Dispatch throughput with wake-up on and off: the same idle worker runs (so every dispatch
    that finds it idle wakes it); DISPATCHERS processes, each connected before the clock starts,
    are started together and each pushes DISPATCH_JOBS no-op jobs one awaited `dispatch()` after
    another; rate = all jobs / (last dispatcher's end - first one's start). Rounds alternate on,
    off, off, on (ABBA: a drift of the machine over the run weighs on both alike); each mode's
    figure is the median of its rounds. A fresh store for every round.
    Beside it, each round's "run" rate: all jobs / (the end of the last job the worker ran, or of
    the last dispatch if later, - the first dispatcher's start). The dispatch rate alone compares
    unlike work: with wake-up off, the worker sleeps through the first part of the window (up to
    --sleep) and again each time it has emptied the queue, so on this 2-core machine it ran about
    a quarter fewer of the jobs within the window than the woken worker, and the CPU it did not
    spend went to the dispatchers: the jobs it had not run are work the off mode puts off past
    the window. The run rate charges both modes the same work (every push and every job run). It
    is reported beside the dispatch rate, not instead: issue 14's target stays on the dispatch
    rate. (Nor is the run rate neutral: the off worker's last poll may leave up to --sleep between
    the last dispatch and the last run, which it charges to the off mode.)
    And the worker's CPU time inside the dispatch window (/proc, from "go" to the last dispatcher's
    end): on SQLite, 16 rounds of both modes and two builds gave dispatch rate = 2,560 - 1,270 x
    that time (r = -0.95), whichever the mode: the dispatchers are CPU-bound on 2 cores and lose what
    the worker runs beside them, and a worker that polls now and then falls inside the window too.

Wake-up is switched off by the environment variables in WAKEUP_OFF, given to the worker and the
dispatchers alike: the one constant to change if the switch is named otherwise. A build where
that variable appears nowhere in config/ or core/ has no switch (its databases have no wake-up):
then only the build as it is runs, labelled so, and the on/off ratio is not measured.

`python -m bench.wake` prints the result as JSON on its last line (bench/run.py reads it);
`python -m bench.wake dispatcher K` is one dispatcher of (i).
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

from bench import harness
from bench.procs import Workers, _cpu_ticks, _tree, clear_stamps, read_stamps

ROOT = Path(__file__).resolve().parent.parent
WAKEUP_OFF = {"DB_WAKE": "off"}
IDLE_CONNECTIONS = ("sqlite", "mysql", "pgsql", "redis")
DISPATCH_CONNECTIONS = ("sqlite", "mysql", "pgsql")
IDLE_PROBES = 50
IDLE_GAP = (0.1, 0.2)             # seconds between two probes
DISPATCHERS = 16
DISPATCH_JOBS = int(os.environ.get("BENCH_WAKE_JOBS") or 100)     # per dispatcher
ROUNDS = ("on", "off", "off", "on")
RUN_WAIT = 300                    # seconds the worker may take to run a round's jobs after the last dispatch


def has_switch() -> bool:
    """Whether this build reads the wake-up switch (its name appears in config/ or core/)."""
    name = next(iter(WAKEUP_OFF))
    return any(f'"{name}"' in path.read_text(errors="replace")
               for folder in ("config", "core") for path in (ROOT / folder).rglob("*.py"))


def modes() -> list[str]:
    """"on" and "off" where the switch exists; else the build as it is ("as built")."""
    return ["on", "off"] if has_switch() else ["as built"]


def _mode_env(mode: str) -> dict[str, str]:
    """Set (or clear) the switch in this process, whose application reads os.environ, and return it
    for the worker and dispatcher processes."""
    for key, value in WAKEUP_OFF.items():
        if mode == "off":
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
    return dict(WAKEUP_OFF) if mode == "off" else {}


def _target(connection: str) -> Any:
    from bench.ours import Ours

    return Ours(connection)


# -- (h) idle latency --------------------------------------------------------------------------------

def idle_latency(connection: str, mode: str) -> dict[str, Any]:
    import redis

    from bench.probe import LATENCY_KEY

    row: dict[str, Any] = {"connection": connection, "mode": mode, "samples": []}
    extra = _mode_env(mode)
    target = _target(connection)
    target.setup()
    client = redis.Redis.from_url(harness.redis_url(target.redis_db), socket_timeout=30)
    worker = target.latency_worker()
    row["worker"] = worker.label
    target.connect()      # before the worker starts: both would create a fresh store's tables at once
    workers = Workers(worker, {**target.env(), **extra, "BENCH_REDIS_URL": harness.redis_url(target.redis_db)})
    try:
        harness.warm_up(target, client, workers)
        for _ in range(IDLE_PROBES):
            time.sleep(random.uniform(*IDLE_GAP))
            target.send_probe()
        for _ in range(IDLE_PROBES):
            popped = client.blpop([LATENCY_KEY], timeout=10)
            if popped is None:
                raise RuntimeError(f"{IDLE_PROBES - len(row['samples'])} probe jobs not run: {workers.tail()}")
            row["samples"].append(float(popped[1]) * 1000)
    finally:
        workers.stop()
        target.teardown()
    row["samples"].sort()
    return row


# -- (i) dispatch throughput with wake-up on and off --------------------------------------------------

def dispatch_round(connection: str, mode: str) -> dict[str, float]:
    """One round of (i): {"dispatch": jobs/s over the dispatch window, "run": jobs/s until the
    worker has also run every job}."""
    import redis

    extra = _mode_env(mode)
    target = _target(connection)
    target.setup()
    client = redis.Redis.from_url(harness.redis_url(target.redis_db), socket_timeout=30)
    total = DISPATCHERS * DISPATCH_JOBS
    stamp = str(Path(tempfile.gettempdir()) / f"bench-wake-stamp-{os.getpid()}")
    clear_stamps(stamp)
    env = {**target.env(), **extra, "BENCH_REDIS_URL": harness.redis_url(target.redis_db),
           "BENCH_STAMP": stamp, "BENCH_JOBS": str(total)}
    target.connect()
    workers = Workers(target.latency_worker(), env)
    dispatchers: list[subprocess.Popen] = []
    try:
        harness.warm_up(target, client, workers)          # the idle worker is up: the dispatches wake it
        dispatchers = [subprocess.Popen([sys.executable, "-m", "bench.wake", "dispatcher", str(DISPATCH_JOBS)],
                                        cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                       for _ in range(DISPATCHERS)]
        for proc in dispatchers:                    # each one connected before any clock starts
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a dispatcher did not start (exit {proc.wait()})")
        worker_cpu = _cpu_seconds(workers)
        for proc in dispatchers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        spans = []
        for proc in dispatchers:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode:
                raise RuntimeError(f"a dispatcher exited {proc.returncode}")
            spans.append(json.loads(out.strip().splitlines()[-1]))
        worker_cpu = _cpu_seconds(workers) - worker_cpu
        deadline = time.monotonic() + RUN_WAIT
        while (stamps := read_stamps(stamp)) is None or stamps[2] < total:
            if not workers.running() or time.monotonic() > deadline:
                raise RuntimeError(f"the worker ran {stamps[2] if stamps else 0} of {total} jobs: {workers.tail()}")
            time.sleep(0.05)
    finally:
        clear_stamps(stamp)
        for proc in dispatchers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        workers.stop()
        target.teardown()
    started, ended = min(s["start"] for s in spans), max(s["end"] for s in spans)
    return {"dispatch": total / (ended - started), "run": total / (max(ended, stamps[1]) - started),
            "worker_cpu": worker_cpu}


def _cpu_seconds(workers: Workers) -> float:
    """CPU time the worker processes (and theirs) have used so far, in seconds."""
    ticks = [_cpu_ticks(pid) for proc in workers.procs for pid in _tree(proc.pid)]
    return sum(t for t in ticks if t is not None) / os.sysconf("SC_CLK_TCK")


def dispatcher(jobs: int) -> None:
    """One dispatcher of (i): connect, say "ready", wait for "go", push `jobs` jobs one after
    another, print when it started and ended (time.time())."""
    import asyncio

    from bench.jobs import NoopJob
    from bootstrap.app import create_app

    async def go() -> dict[str, float]:
        async with create_app() as app:
            await app.queue.connection()
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            start = time.time()
            for _ in range(jobs):
                await NoopJob.dispatch()
            return {"start": start, "end": time.time()}

    print(json.dumps(asyncio.run(go())), flush=True)


# -- the scenario as a target of bench/run.py -------------------------------------------------------

def _attempt(errors: list[str], what: str, fn: Any) -> Any:
    try:
        return fn()
    except harness.NotRunnable as exc:
        return {"note": f"not run: {exc}"}
    except Exception as exc:
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return None


def run() -> dict[str, Any]:
    errors: list[str] = []
    switch = has_switch()
    idle = []
    for connection in IDLE_CONNECTIONS:
        for mode in (modes() if connection != "redis" else modes()[:1]):     # the switch is the databases'
            row = _attempt(errors, f"(h) {connection} {mode}", partial(idle_latency, connection, mode))
            idle.append(row if row and "connection" in row else {"connection": connection, "mode": mode,
                                                                  "samples": [], **(row or {})})
    dispatch = []
    for connection in DISPATCH_CONNECTIONS:
        rates: dict[str, list[float]] = {}
        run_rates: dict[str, list[float]] = {}
        worker_cpu: dict[str, list[float]] = {}
        note = None
        for mode in (ROUNDS if switch else ("as built",) * 2):
            got = _attempt(errors, f"(i) {connection} {mode}", partial(dispatch_round, connection, mode))
            if got and "note" in got:
                note = got["note"]
                break
            if got:
                rates.setdefault(mode, []).append(got["dispatch"])
                run_rates.setdefault(mode, []).append(got["run"])
                worker_cpu.setdefault(mode, []).append(got["worker_cpu"])
        for mode in modes():
            dispatched, ran = rates.get(mode) or [], run_rates.get(mode) or []
            dispatch.append({"connection": connection, "mode": mode, "rates": dispatched,
                             "rate": statistics.median(dispatched) if dispatched else None, "run_rates": ran,
                             "run_rate": statistics.median(ran) if ran else None,
                             "worker_cpu": [round(x, 2) for x in worker_cpu.get(mode) or []],
                             **({"note": note} if note else {})})
    _mode_env("on")
    return {"name": "ours wake-up", "switch": " ".join(f"{k}={v}" for k, v in WAKEUP_OFF.items()) if switch else None,
            "dispatchers": DISPATCHERS, "dispatch_jobs": DISPATCH_JOBS, "idle_probes": IDLE_PROBES,
            "idle": idle, "dispatch": dispatch, "errors": errors}


def main(argv: list[str]) -> None:
    if argv[:1] == ["dispatcher"]:
        dispatcher(int(argv[1]))
        return
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # run.py's timeout: finally blocks stop workers
    print(json.dumps(run()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
