"""Named connections (config/queue.py's `connections`) and the driver registry behind them."""
from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from bootstrap.app import create_app
from core.errors import ConfigError, NotSupported
from core.queue.contract import QueueConnection, ReservedJob, admin
from core.queue.manager import register_driver, registered_drivers
from tests.conftest import ROOT, run_cli
from tests.jobs.sample_jobs import RecordingJob, read_events

queue_config = importlib.import_module("config.queue")
UNKNOWN = "unknown queue connection 'nosuch': the configured connections are database, redis, sync (config/queue.py)"


class UserProject:
    """A copy of the project whose config/queue.py a user has edited; the framework and the jobs
    are the real ones (linked). Commands and scripts run in it as a user runs them."""

    def __init__(self, path: Path, config_lines: str) -> None:
        self.path = path
        path.mkdir()
        shutil.copy(ROOT / "main.py", path / "main.py")
        shutil.copytree(ROOT / "config", path / "config", ignore=shutil.ignore_patterns("__pycache__"))
        with open(path / "config" / "queue.py", "a") as f:
            f.write("\n" + config_lines + "\n")
        for linked in ("core", "app", "bootstrap", "routes", "tests"):
            (path / linked).symlink_to(ROOT / linked)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return self._run([sys.executable, "main.py", *args])

    def script(self, code: str) -> subprocess.CompletedProcess:
        return self._run([sys.executable, "-c", code])

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, cwd=self.path, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{argv[1:]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result


DISPATCH = """
import asyncio, json
from bootstrap.app import create_app
from tests.jobs.sample_jobs import FlakyJob

async def main():
    async with create_app():
        good = await FlakyJob.dispatch(log={log!r}, succeed_on=1).on_connection("bulk")
        bad = await FlakyJob.dispatch(log={log!r}, succeed_on=99).on_connection("bulk")
    print(json.dumps([good, bad]))

asyncio.run(main())
"""


@pytest.mark.parametrize("driver", ["database", "redis"])
def test_a_connection_the_user_named_carries_jobs_from_dispatch_to_worker_to_failed_and_back(
        request, tmp_path, driver):
    if driver == "redis":
        request.getfixturevalue("redis_env")
    project = UserProject(tmp_path / "project", f'CONNECTIONS["bulk"] = {{"driver": "{driver}"}}')
    log = str(tmp_path / "events")

    good, bad = json.loads(project.script(DISPATCH.format(log=log)).stdout)
    sizes = json.loads(project.cli("queue:size", "bulk", "--json").stdout)
    assert sizes == {"connection": "bulk",
                     "queues": {"default": {"pending": 2, "delayed": 0, "reserved": 0, "waiting": 0}}}

    out = project.cli("queue:work", "bulk", "--stop-when-empty", "--sleep", "0.05", "--tries", "1").stdout
    assert "connection bulk" in out
    assert f"[{good}]" in next(line for line in out.splitlines() if "DONE" in line)
    assert f"[{bad}]" in next(line for line in out.splitlines() if "FAIL" in line)
    failed = json.loads(project.cli("queue:failed", "--json").stdout)
    assert [(job["id"], job["connection"]) for job in failed] == [(bad, "bulk")]

    assert f"Retried {bad} (tests.jobs.sample_jobs.FlakyJob) onto bulk/default" \
        in project.cli("queue:retry", "all").stdout
    assert json.loads(project.cli("queue:failed", "--json").stdout) == []
    assert json.loads(project.cli("queue:size", "bulk", "--json").stdout)["queues"]["default"]["pending"] == 1
    assert [e["attempts"] for e in read_events(log) if e["event"] == "handle"] == [1, 1]


def test_an_unknown_connection_name_is_one_line_listing_the_configured_names():
    for command in (["queue:work", "nosuch"], ["queue:size", "nosuch"], ["queue:clear", "nosuch"]):
        result = run_cli(*command)
        assert result.returncode == 1 and result.stderr.strip() == UNKNOWN and result.stdout == ""

    result = run_cli("queue:failed", env={"QUEUE_CONNECTION": "nosuch"})
    assert result.returncode == 1
    assert result.stderr.strip() == ("QUEUE_CONNECTION must name a connection of config/queue.py "
                                     "(database, redis, sync), got 'nosuch'")


async def test_a_dispatch_onto_an_unknown_name_is_refused_and_pushes_nothing(tmp_path):
    async with create_app() as app:
        with pytest.raises(ConfigError) as refused:
            await RecordingJob.dispatch(log=str(tmp_path / "events")).on_connection("nosuch")
        assert str(refused.value) == UNKNOWN
        assert (await (await app.queue.connection()).sizes(["default"]))["default"].pending == 0


async def test_a_named_connection_of_the_sync_driver_runs_the_job_at_once(monkeypatch, tmp_path):
    monkeypatch.setitem(queue_config.CONNECTIONS, "inline", {"driver": "sync"})
    log = str(tmp_path / "events")
    async with create_app():
        job_id = await RecordingJob.dispatch(log=log, value=7).on_connection("inline")
    assert [(e["job_id"], e["value"]) for e in read_events(log)] == [(job_id, 7)]


class MemoryQueue(QueueConnection):
    """A driver the framework does not ship: a list in memory."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str]] = []

    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        self.jobs.append((queue, payload))

    async def reserve(self, queues: Sequence[str], claim: str | None = None) -> ReservedJob | None:
        return None

    async def acknowledge(self, job: ReservedJob) -> bool:
        return False

    async def release(self, job: ReservedJob, delay: float = 0) -> bool:
        return False

    async def mark_failing(self, job: ReservedJob, exception: str, failed_ran: bool = False) -> bool:
        return False

    async def fail(self, job: ReservedJob, exception: str) -> bool:
        return False

    async def extend(self, jobs: Sequence[ReservedJob]) -> None:
        return None


@pytest.fixture
def memory_driver(monkeypatch):
    async def make(manager, name, settings):
        return MemoryQueue()

    register_driver("memory", make, lambda config, settings: f"memory ({settings['label']})")
    monkeypatch.setitem(queue_config.CONNECTIONS, "mem", {"driver": "memory", "label": "scratch"})
    yield
    from core.queue import manager

    manager._DRIVERS.pop("memory")


async def test_a_registered_driver_serves_a_named_connection(memory_driver, tmp_path):
    assert "memory" in registered_drivers()
    async with create_app() as app:
        job_id = await RecordingJob.dispatch(log=str(tmp_path / "events")).on_queue("emails").on_connection("mem")
        conn = await app.queue.connection("mem")
        assert isinstance(conn, MemoryQueue) and conn.name == "mem"
        assert [(queue, json.loads(payload)["uuid"]) for queue, payload in conn.jobs] == [("emails", job_id)]
        assert app.queue.describe("mem") == "memory (scratch)"
        assert await conn.restart_signal() == ""       # no admin interface: a signal that never changes
        with pytest.raises(NotSupported, match="^queue:size is not available on the mem connection: "
                                               "it cannot be inspected$"):
            admin(conn, "queue:size")


@pytest.mark.parametrize("settings, message", [
    ({"driver": "nope"}, "queue connection 'odd' uses driver 'nope', which is not registered: "
                         "the drivers are database, redis, sync"),
    ({"driver": "redis", "db": 3}, "queue connection 'odd': the redis driver takes no setting 'db' "
                                   "(it reads its store's settings from .env)"),
])
async def test_a_connection_its_driver_cannot_serve_is_one_clear_line(monkeypatch, settings, message):
    monkeypatch.setitem(queue_config.CONNECTIONS, "odd", settings)
    async with create_app() as app:
        with pytest.raises(ConfigError) as refused:
            await app.queue.connection("odd")
    assert str(refused.value) == message


def test_a_connection_without_a_driver_is_refused_when_config_is_read(monkeypatch):
    monkeypatch.setitem(queue_config.CONNECTIONS, "broken", {"queue": "high"})
    with pytest.raises(ConfigError, match="^config/queue.py: connection 'broken' needs a driver"):
        create_app()


@pytest.mark.parametrize("command", ["queue:size", "queue:clear", "queue:restart"])
def test_admin_commands_on_a_connection_without_the_admin_interface_say_so_in_one_line(command):
    result = run_cli(command, "sync")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (f"{command} is not available on the sync connection: "
                                     "it keeps no jobs (they run when dispatched)")


def test_queue_restart_without_a_name_signals_the_connections_that_take_it(redis_env):
    result = run_cli("queue:restart", env={"QUEUE_CONNECTION": "sync"})
    assert result.returncode == 0 and result.stdout.strip() == "Restart signal sent to workers on database, redis."

    async def signals() -> list[str]:
        async with create_app() as app:
            return [await (await app.queue.connection(name)).restart_signal() for name in ("database", "redis")]

    assert "" not in asyncio.run(signals())


def test_queue_restart_without_a_name_skips_a_connection_it_cannot_reach_but_not_the_default(redis_env):
    result = run_cli("queue:restart", env={"REDIS_PORT": "1"})      # nothing listens on port 1
    assert result.returncode == 0 and result.stdout.strip() == "Restart signal sent to workers on database."
    assert result.stderr.strip().startswith("queue:restart: skipped redis: Cannot connect to Redis at 127.0.0.1:1")
    down = run_cli("queue:restart", env={"QUEUE_CONNECTION": "redis", "REDIS_PORT": "1"})
    assert down.returncode == 1 and "Cannot connect to Redis at 127.0.0.1:1" in down.stderr


def test_queue_restart_stops_a_redis_worker_when_the_default_connection_is_the_database(redis_env):
    """SPEC 4: every running worker finishes its jobs and exits. Each connection keeps its own signal,
    where its workers read it: signalling only QUEUE_CONNECTION missed the Redis workers."""
    worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "redis", "--sleep", "0.1"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in worker.stdout:          # once this line is out, the worker has read the signal it started with
            if "Worker started" in line:
                break
        result = run_cli("queue:restart", env={"QUEUE_CONNECTION": "database"})
        assert result.returncode == 0 and "redis" in result.stdout, result.stderr
        out, _ = worker.communicate(timeout=20)
    finally:
        worker.kill()
    assert worker.returncode == 0 and "queue:restart" in out
