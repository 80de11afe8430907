"""Real servers the tests use, and how a test learns one is absent (skip, or fail under CI=true);
what each pytest process owns when the suite runs in parallel (its Redis db, its private ports)."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

MYSQL = ("127.0.0.1", int(os.environ.get("TEST_MYSQL_PORT", "3306")))
REDIS = ("127.0.0.1", int(os.environ.get("TEST_REDIS_PORT", "6379")))
MQTT = ("127.0.0.1", int(os.environ.get("TEST_MQTT_PORT", "1883")))
PGSQL = ("127.0.0.1", int(os.environ.get("TEST_PGSQL_PORT", "5432")))
PGSQL_USER = os.environ.get("TEST_PGSQL_USER", "postgres")
NAMES = {MYSQL: "MySQL/MariaDB", REDIS: "Redis", MQTT: "the MQTT broker", PGSQL: "PostgreSQL"}


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def require(address: tuple[str, int]) -> None:
    """Skip when the server is absent; under CI=true an absent server fails the test instead."""
    if reachable(address):
        return
    message = f"{NAMES[address]} is not reachable at {address[0]}:{address[1]}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: required)")
    pytest.skip(message)


def pgsql_query(statement: str, *args: object, database: str = "test") -> list[tuple]:
    """One statement on the real PostgreSQL server (not through a proxy), its rows; run in a thread
    of its own, as a test or fixture may call it from inside a running event loop."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import asyncpg

    async def run() -> list[tuple]:
        conn = await asyncpg.connect(host=PGSQL[0], port=PGSQL[1], user=PGSQL_USER, database=database)
        try:
            return [tuple(row) for row in await conn.fetch(statement, *args)]
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# -- what this pytest process owns (pytest-xdist runs several; docs/development.md) -------------------------

# Dbs no tool of the project uses: 1-8 are left to development tools, 10-13 are the benchmarks'.
DEFAULT_REDIS_DBS = (9, 14, 15)


def xdist_worker() -> tuple[int, int]:
    """(index, count) of this process among pytest-xdist's workers: gw2 of 3 is (2, 3); a serial run is (0, 1)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "") or 1)
    return (int(name[2:]) if name.startswith("gw") else 0), count


def redis_dbs(spec: str) -> list[int]:
    """The dbs TEST_REDIS_DB names: one (5), a range (5-7) or a list (9,14,15); unset, the default three."""
    if not spec.strip():
        return list(DEFAULT_REDIS_DBS)
    if "-" in spec:
        first, last = (int(part) for part in spec.split("-"))
        return list(range(first, last + 1))
    return [int(db) for db in spec.split(",") if db.strip()]


def redis_test_db() -> int:
    """This process's own Redis db: no two workers ever flush each other's keys. A db is never
    guessed: one named for a serial run is not stretched over several processes."""
    spec = os.environ.get("TEST_REDIS_DB", "")
    index, count = xdist_worker()
    try:
        dbs = redis_dbs(spec)
    except ValueError:
        pytest.fail(f"TEST_REDIS_DB={spec!r} is not a db (5), a range (5-7) or a list (9,14,15)")
    if index >= len(dbs) or not 0 <= dbs[index] <= 15:
        pytest.fail(f"{count} test processes need {count} Redis dbs (0-15); TEST_REDIS_DB={spec or '(unset)'} "
                    f"gives {dbs}: name one per process (a range such as 5-7, or a list), or run with -n 0")
    return dbs[index]


_handed_out: set[int] = set()


def port_share() -> range:
    """This process's share of the ports below the kernel's ephemeral range: no outgoing connection
    takes one as its local port, and no two workers of a run share one."""
    low = 32768
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if ephemeral.exists():
        low = int(ephemeral.read_text().split()[0])
    first, last = 20000, max(low, 21000)
    index, count = xdist_worker()
    share = (last - first) // count
    return range(first + index * share, first + (index + 1) * share)


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on, never handed out twice in this process (a stopped server's
    port stays its own while it restarts)."""
    ports = port_share()
    for _ in range(200):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def stop_server(process: "subprocess.Popen | None") -> None:
    """SIGTERM a server the tests started (a graceful shutdown: files flushed), SIGKILL if it hangs."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
