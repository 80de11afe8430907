"""`make bench`: every target in its own process, with a time limit, then one report.

Ours runs on SQLite, MySQL and Redis with the project's venv; each peer with the venv the
Makefile built for it (bench/.venv/<peer>). A target that is not installed, fails or overruns its
time limit is reported as such and the run goes on. Redis: ours uses db 11, the peers db 12,
each flushed before and after (here too, after a target that had to be stopped).
The report goes to stdout and to bench/results/latest.md; each target's stderr (tracebacks,
progress) to bench/results/logs/<target>.log.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench import harness, report  # noqa: E402


@dataclass(frozen=True)
class Run:
    name: str
    python: Path
    args: tuple[str, ...]
    timeout: float
    redis_db: int


OURS = [Run(f"ours ({c})", Path(sys.executable), ("bench.ours", c), t, harness.OUR_DB)
        for c, t in (("sqlite", 120), ("mysql", 120), ("redis", 180))]
RESULTS = BENCH / "results"
PEERS = [Run(p, BENCH / ".venv" / p / "bin" / "python", (f"bench.peers.{p}",), 150, harness.PEER_DB)
         for p in ("arq", "saq", "rq", "dramatiq", "celery")]

METHOD = """\
- **Enqueue seq/s**: N no-op jobs pushed one awaited call after another from one process, client
  connected before the clock starts (ours: `await NoopJob.dispatch()`; arq `enqueue_job`, SAQ
  `enqueue`, RQ `enqueue`, Dramatiq `send`, Celery `delay`). **Bulk**: ours `NoopJob.dispatch_many`,
  RQ `enqueue_many`, the others have none.
- **Worker jobs/s**: N no-op jobs queued, then one worker process started as a user starts it (ours:
  `python main.py queue:work --stop-when-empty --concurrency C`); rate = N / (last job's end - first
  job's start), both times taken inside the jobs, so process start-up and shutdown are excluded.
  N = 20,000 on Redis, 5,000 on SQLite/MySQL. One run each, not a median.
- **Idle latency**: a running idle worker; one probe job at a time, dispatched with time.time()
  taken just before the dispatch call; its handler records now - sent on start. 20-50 ms pauses
  between probes (up to 200 samples or the scenario's time budget), then 8 probes after 1-2 s pauses.
- Payloads unsigned (APP_KEY empty). Worker output goes to a file. Peers as shipped except
  the settings named in the table (arq's poll_delay 0.01 for throughput only)."""


def run_target(run: Run) -> dict:
    if not run.python.exists():
        return {"name": run.name, "missing": f"{run.python} not installed (see the make bench output)"}
    started = time.monotonic()
    log_path = RESULTS / "logs" / f"{run.name.replace(' ', '').replace('(', '-').rstrip(')')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        return _run_logged(run, log, log_path, started)


def _run_logged(run: Run, log: Any, log_path: Path, started: float) -> dict:
    proc = subprocess.Popen([str(run.python), "-m", "bench.harness", *run.args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=log, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=run.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)          # the harness stops its workers on SIGTERM
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        _flush(run.redis_db)
        return {"name": run.name, "missing": f"timed out after {run.timeout:.0f}s"}
    lines = out.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        log.flush()
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        return {"name": run.name, "missing": f"exited {proc.returncode}: {tail}"}
    print(f"  {run.name}: done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return result


def _flush(db: int) -> None:
    import redis

    redis.Redis.from_url(harness.redis_url(db)).flushdb()


def machine() -> str:
    import redis

    info = redis.Redis.from_url(harness.redis_url(harness.OUR_DB)).info("server")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {platform.platform()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, Redis {info.get('redis_version')}, all on 127.0.0.1; "
            f"load average at the end {load} (other work on the machine skews single runs).")


def main() -> None:
    print("bench: running ours (sqlite, mysql, redis), then arq, saq, rq, dramatiq, celery", file=sys.stderr)
    ours = [run_target(r) for r in OURS]
    peers = [run_target(r) for r in PEERS]
    for row in ours:
        if row.get("missing"):
            row.setdefault("errors", []).append(row["missing"])
            row.setdefault("jobs", 0)
    text = report.render(ours, peers, machine(), METHOD)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text)


if __name__ == "__main__":
    main()
