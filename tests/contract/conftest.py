"""The `backend` fixture: one open queue connection per store, built through the real QueueManager.

Every test in this folder runs unchanged against SQLite, MySQL/MariaDB, PostgreSQL and Redis.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bootstrap.app import create_app
from core.app import Application
from core.queue.contract import QueueConnection
from tests.conftest import store_env

ROOT = Path(__file__).resolve().parents[2]
VISIBILITY_TIMEOUT = 2     # seconds; the database connection counts whole seconds, so allow ~1 s slack
APP_KEY = "contract-suite-key"


@dataclass
class Backend:
    kind: str                  # sqlite | mysql | pgsql | redis | redis-cluster
    app: Application
    conn: QueueConnection
    tmp: Path

    @property
    def connection(self) -> str:
        return self.conn.name

    def start_worker(self, *args: str) -> subprocess.Popen:
        """`python main.py queue:work CONNECTION ARGS` in the background, output to a file."""
        out = open(self.tmp / f"worker-{uuid.uuid4().hex[:8]}.log", "w")
        return subprocess.Popen([sys.executable, "main.py", "queue:work", self.connection, *args], cwd=ROOT,
                                env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def worker_logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("worker-*.log")))


def configure(monkeypatch: pytest.MonkeyPatch, connection: str) -> None:
    monkeypatch.setenv("QUEUE_CONNECTION", connection)
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", str(VISIBILITY_TIMEOUT))
    monkeypatch.setenv("APP_KEY", APP_KEY)


async def open_backend(kind: str, tmp: Path) -> AsyncIterator[Backend]:
    async with create_app() as app:
        yield Backend(kind, app, await app.queue.connection(), tmp)


@pytest.fixture(params=["sqlite", "mysql", "pgsql", "redis"])
async def backend(request, monkeypatch, tmp_path) -> AsyncIterator[Backend]:
    kind = request.param
    store_env(request, kind)
    configure(monkeypatch, "redis" if kind == "redis" else "database")
    async for b in open_backend(kind, tmp_path):
        yield b


def payload(n: int = 0, **extra) -> str:
    """A raw payload as a connection stores it: JSON with a uuid, spacing a re-encoder would change."""
    body = {"uuid": str(uuid.uuid4()), "job": "tests.jobs.contract_jobs.RecordRun", "n": n, "text": "é ✓", **extra}
    return json.dumps(body, separators=(", ", ": "), ensure_ascii=False)
