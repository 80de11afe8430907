"""What wake-up (SPEC 17) costs a dispatcher: 16 concurrent dispatchers pushing no-op jobs, with
wake-up on and off (DB_WAKE), interleaved in one run (on, off, on, off, ...) so the machine's swings
fall on both alike. A PostgreSQL listener is connected, so the notifications are queued for real.

    .venv/bin/python -m bench.wake_ab [pgsql|mysql|sqlite ...]      (default: pgsql mysql)
    .venv/bin/python -m bench.wake_ab latency [pgsql|mysql|sqlite ...]  (default: all three)

`latency`: idle dispatch-to-start, a worker with the default --sleep 1 and wake-up on, then off:
a job carrying time.time() is dispatched to the idle worker, its handler writes how late it
started, and after a random pause of 20-200 ms the next; p50 and p99 of BENCH_WAKE_SAMPLES
(default 200; 20 with wake-up off, each costing up to a second).

BENCH_WAKE_JOBS (default 4000) jobs per round, BENCH_WAKE_ROUNDS (default 4) rounds per setting.
Prints one line per database: jobs/s with wake-up on and off (median of the rounds) and on/off.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ours import fresh_database  # noqa: E402

DISPATCHERS = int(os.environ.get("BENCH_WAKE_DISPATCHERS") or 16)
JOBS = int(os.environ.get("BENCH_WAKE_JOBS") or 4000)
ROUNDS = int(os.environ.get("BENCH_WAKE_ROUNDS") or 4)
DATABASE = "bench_wake"


def configure(kind: str, wake: bool, sqlite: Path) -> None:
    os.environ.update({
        "QUEUE_CONNECTION": "database", "DB_CONNECTION": kind, "DB_HOST": "127.0.0.1",
        "DB_PORT": "5432" if kind == "pgsql" else "3306", "DB_USERNAME": "postgres" if kind == "pgsql" else "root",
        "DB_PASSWORD": "", "DB_DATABASE": str(sqlite) if kind == "sqlite" else DATABASE, "APP_KEY": "",
        "JOB_PACKAGES": "bench.jobs", "DB_WAKE": "on" if wake else "off", "LOG_FILE": "",
    })


async def one_round(kind: str) -> float:
    """Jobs per second of DISPATCHERS tasks pushing JOBS jobs in all, one at a time each."""
    from bench.jobs import NoopJob
    from bootstrap.app import create_app

    listener = None
    async with create_app() as app:
        conn = await app.queue.connection()
        if kind == "pgsql":
            import asyncpg

            listener = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database=DATABASE)
            await listener.add_listener("queue_jobs", lambda *_: None)
        await NoopJob.dispatch()          # statements prepared, pool warm

        async def dispatcher(n: int) -> None:
            for _ in range(n):
                await NoopJob.dispatch()

        started = time.perf_counter()
        await asyncio.gather(*(dispatcher(JOBS // DISPATCHERS) for _ in range(DISPATCHERS)))
        rate = (JOBS // DISPATCHERS * DISPATCHERS) / (time.perf_counter() - started)
        await conn.clear("default")
    if listener is not None:
        await listener.close()
    return rate


async def latencies(kind: str, wake: bool, samples: int, workdir: Path) -> list[float]:
    import random
    import subprocess

    from bench.jobs import WakeStampJob as StampJob
    from bootstrap.app import create_app

    stamps = workdir / f"{kind}-{wake}.txt"
    stamps.unlink(missing_ok=True)
    worker = subprocess.Popen([sys.executable, "main.py", "queue:work"], cwd=ROOT, env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with create_app() as app:
            await app.queue.connection()
            for n in range(samples + 3):          # three to warm up
                await StampJob.dispatch(path=str(stamps), sent=time.time())
                while not stamps.exists() or len(stamps.read_text().split()) < n + 1:
                    await asyncio.sleep(0.001)
                await asyncio.sleep(random.uniform(0.02, 0.2))
    finally:
        worker.terminate()
        worker.wait()
    return [float(x) * 1000 for x in stamps.read_text().split()[3:]]


def latency(kinds: list[str]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-wake-"))
    samples = int(os.environ.get("BENCH_WAKE_SAMPLES") or 200)
    for kind in kinds:
        configure(kind, True, workdir / "wake.sqlite")
        fresh_database(kind, DATABASE)
        line = []
        for wake in (True, False):
            configure(kind, wake, workdir / "wake.sqlite")
            ms = sorted(asyncio.run(latencies(kind, wake, samples if wake else max(5, samples // 10), workdir)))
            line.append(f"wake-up {'on' if wake else 'off'} p50 {statistics.median(ms):.1f} ms "
                        f"p99 {ms[max(0, int(len(ms) * 0.99) - 1)]:.1f} ms ({len(ms)} samples)")
        print(f"{kind}: idle dispatch-to-start, " + ", ".join(line), flush=True)


def main(kinds: list[str]) -> None:
    if os.environ.get("BENCH_WAKE_RATE"):       # wake-ups a second per queue, to try another pace
        import core.wake

        core.wake.RATE = float(os.environ["BENCH_WAKE_RATE"])
    sqlite = Path(tempfile.mkdtemp(prefix="bench-wake-")) / "wake.sqlite"
    for kind in kinds:
        rates: dict[bool, list[float]] = {True: [], False: []}
        configure(kind, True, sqlite)
        fresh_database(kind, DATABASE)
        for _ in range(ROUNDS):
            for wake in (True, False):
                configure(kind, wake, sqlite)
                rates[wake].append(asyncio.run(one_round(kind)))
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        print(f"{kind}: {DISPATCHERS} dispatchers, wake-up on {on:.0f} jobs/s, off {off:.0f} jobs/s, "
              f"on/off {on / off:.2f} (rounds on {[round(r) for r in rates[True]]}, "
              f"off {[round(r) for r in rates[False]]})", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["latency"]:
        latency(sys.argv[2:] or ["sqlite", "mysql", "pgsql"])
    else:
        main(sys.argv[1:] or ["pgsql", "mysql"])
