"""Shared fixtures: an isolated environment per test (temp SQLite file, own MySQL database, own Redis db)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import MYSQL, PGSQL, PGSQL_USER, REDIS, pgsql_query, redis_test_db, require, unique_name

ROOT = Path(__file__).resolve().parent.parent
ENV_KEYS = ("QUEUE_CONNECTION", "DB_CONNECTION", "DB_DATABASE", "DB_HOST", "DB_PORT", "DB_USERNAME",
            "DB_PASSWORD", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_URL",
            "REDIS_CLUSTER", "REDIS_PREFIX", "QUEUE_VISIBILITY_TIMEOUT", "APP_KEY", "LOG_FILE",
            "QUEUE_DISPATCH_TIMEOUT", "DB_TIMEOUT", "QUEUE_MAX_PAYLOAD_BYTES",
            "QUEUE_REPLAY_WINDOW", "JOB_PACKAGES", "APP_LISTENERS", "MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME",
            "MQTT_PASSWORD", "MQTT_CLIENT_ID",
            "MQTT_TLS", "MQTT_SHARED_GROUP", "MQTT_MAX_CONCURRENT", "MQTT_CONNECT_TIMEOUT", "MQTT_CLEAN_SESSION",
            "MQTT_CA_FILE", "MQTT_CERT_FILE", "MQTT_KEY_FILE", "MQTT_PROTOCOL", "DB_LISTEN_URL", "DB_WAKE")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Keep each xdist_group on one process (pytest.ini: --dist loadgroup). pytest-xdist 3.8 marks a
    grouped test by appending "@group" to item._nodeid, which pytest 9 no longer reads (a node's id
    is item._id): the groups were spread over the processes, the three chaos stores ran at once."""
    if not getattr(config.option, "loadgroup", False):      # set in xdist's worker processes only
        return
    from _pytest.nodeid import coerce_node_id

    for item in items:
        names = sorted({str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                        for mark in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid:
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test starts from defaults with its own SQLite file, whatever .env holds."""
    for key in ENV_KEYS:
        monkeypatch.setenv(key, "")
    monkeypatch.setenv("DB_DATABASE", str(tmp_path / "database.sqlite"))
    monkeypatch.setenv("JOB_PACKAGES", "app.jobs,tests.jobs")
    from core import app as app_module

    app_module.set_current(None)
    yield
    app_module.set_current(None)


@pytest.fixture
def mysql_env(monkeypatch):
    """A fresh MySQL database for this test, dropped afterwards; env points DB_* at it."""
    require(MYSQL)
    import pymysql

    name = unique_name("test_jobs")
    conn = pymysql.connect(host=MYSQL[0], port=MYSQL[1], user="root", password="", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    monkeypatch.setenv("DB_CONNECTION", "mysql")
    monkeypatch.setenv("DB_DATABASE", name)
    monkeypatch.setenv("DB_HOST", MYSQL[0])
    monkeypatch.setenv("DB_PORT", str(MYSQL[1]))
    monkeypatch.setenv("DB_USERNAME", "root")
    yield name
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture
def pgsql_env(monkeypatch):
    """A fresh PostgreSQL database for this test, dropped afterwards (with the connections of
    workers it left behind); env points DB_* at it. A database, not a schema: DB_* has no schema
    setting, and CREATE DATABASE takes about 0.1 s."""
    require(PGSQL)
    name = unique_name("test_jobs")
    pgsql_query(f'CREATE DATABASE "{name}"')
    monkeypatch.setenv("DB_CONNECTION", "pgsql")
    monkeypatch.setenv("DB_DATABASE", name)
    monkeypatch.setenv("DB_HOST", PGSQL[0])
    monkeypatch.setenv("DB_PORT", str(PGSQL[1]))
    monkeypatch.setenv("DB_USERNAME", PGSQL_USER)
    yield name
    pgsql_query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def store_env(request, kind: str) -> None:
    """The server fixture a store kind needs (sqlite needs none: every test has its own file)."""
    if kind in ("mysql", "pgsql", "redis"):
        request.getfixturevalue(f"{kind}_env")


@pytest.fixture
def redis_env(monkeypatch):
    """This test process's own Redis db (tests/servers.py, redis_test_db), flushed before and after;
    env points at it."""
    require(REDIS)
    import redis

    db = redis_test_db()
    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=db)
    client.flushdb()
    monkeypatch.setenv("REDIS_HOST", REDIS[0])
    monkeypatch.setenv("REDIS_PORT", str(REDIS[1]))
    monkeypatch.setenv("REDIS_DB", str(db))
    yield db
    client.flushdb()
    client.close()


def run_cli(*args: str, env: dict | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess:
    """`python main.py ARGS` as a user types it, with the test's environment."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=full_env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"main.py {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(params=["sqlite", "mysql", "pgsql", "redis"])
async def store(request, monkeypatch, tmp_path):
    """The contract suite's Backend on each store, with a 30 s visibility timeout: a job seen pending
    right after a worker stopped was released by it, not expired."""
    from tests.contract.conftest import configure, open_backend

    store_env(request, request.param)
    configure(monkeypatch, "redis" if request.param == "redis" else "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "30")
    async for backend in open_backend(request.param, tmp_path):
        yield backend


def use_store(request, monkeypatch, store: str, visibility_timeout: int) -> str:
    """Point the queue at `store` (sqlite or redis) with this QUEUE_VISIBILITY_TIMEOUT, for the
    workers a test starts and for its own reserver."""
    if store == "redis":
        request.getfixturevalue("redis_env")
    monkeypatch.setenv("QUEUE_CONNECTION", "redis" if store == "redis" else "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", str(visibility_timeout))
    return store
