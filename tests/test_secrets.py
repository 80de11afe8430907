"""DB_PASSWORD, REDIS_PASSWORD, MQTT_PASSWORD and APP_KEY appear in no output (SPEC §8): distinctive values
are set, the paths where they could slip out are driven for real - wrong and unreachable servers, a job
that fails with them in its message, MQTT handlers, every --help, queue:failed, LOG_FILE - and all
that was printed, logged or stored is searched for them."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest
from click.testing import CliRunner

from bootstrap.app import create_app
from core.console import cli
from core.router import Router
from tests.conftest import ROOT, run_cli
from tests.mqtt_support import mqtt_config, publish, running_app, topic_prefix
from tests.redis_server import LocalRedis
from tests.servers import MQTT, MYSQL, free_port, require

SECRETS = {
    "DB_PASSWORD": f"dbpw-{secrets.token_hex(6)}",
    "REDIS_PASSWORD": f"redispw-{secrets.token_hex(6)}",
    "MQTT_PASSWORD": f"mqttpw-{secrets.token_hex(6)}",
    "APP_KEY": "base64:" + base64.b64encode(secrets.token_bytes(32)).decode(),
}


@pytest.fixture(autouse=True)
def secret_env(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def assert_no_secret(*texts: str) -> None:
    """Neither a whole secret nor a telling piece of one (its middle 8 characters)."""
    text = "\n".join(texts)
    for name, value in SECRETS.items():
        middle = value[len(value) // 2 - 4:len(value) // 2 + 4]
        assert value not in text and middle not in text, f"{name} leaked"


@pytest.fixture
def log_file():
    """A LOG_FILE of this test's own under storage/logs/, removed afterwards."""
    name = f"secrets-{uuid.uuid4().hex[:8]}.log"
    path = ROOT / "storage" / "logs" / name
    yield name, path
    path.unlink(missing_ok=True)


def one_line_error(result: subprocess.CompletedProcess, starts: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), result.stderr
    assert_no_secret(result.stdout, result.stderr)


# -- --help ------------------------------------------------------------------------------------------

def test_no_help_text_shows_a_secret():
    top = run_cli("--help", check=True)
    assert "queue:work" in top.stdout
    runner = CliRunner()
    texts = [top.stdout + top.stderr]
    for name in sorted(cli.commands):
        result = runner.invoke(cli, [name, "--help"], prog_name="python main.py")
        assert result.exit_code == 0 and f"Usage: python main.py {name}" in result.output
        texts.append(result.output)
    assert len(texts) > 10
    assert_no_secret(*texts)


# -- a job that fails with the secrets in its message ------------------------------------------------

def test_a_job_failing_with_secrets_leaves_them_nowhere(log_file, tmp_path):
    from tests.jobs.hostile_jobs import LeakyJob

    name, path = log_file

    async def dispatch() -> str:
        async with create_app():
            return await LeakyJob.dispatch()

    job_id = asyncio.run(dispatch())
    worker = run_cli("queue:work", "--stop-when-empty", "--sleep", "0.05", env={"LOG_FILE": name}, check=True)
    listed = run_cli("queue:failed", check=True)
    as_json = run_cli("queue:failed", "--json", check=True)
    with sqlite3.connect(tmp_path / "database.sqlite") as db:
        rows = db.execute("SELECT * FROM failed_jobs").fetchall()
    logged = path.read_text()

    # The paths were taken: the job ran twice, failed, was logged and recorded, its text masked.
    assert worker.stdout.count(f"RETRY   LeakyJob [{job_id}]") == 1 and f"FAIL    LeakyJob [{job_id}]" in worker.stdout
    assert "connecting with" in logged and "LeakyJob gave up" in logged and "Traceback" in logged
    [row] = rows
    assert row[1] == job_id and "cannot connect to mysql://app:***@db/app" in row[5]
    assert [j["id"] for j in json.loads(as_json.stdout)] == [job_id]
    assert_no_secret(worker.stdout, worker.stderr, listed.stdout, listed.stderr, as_json.stdout, logged,
                     repr(rows))


# -- MySQL -------------------------------------------------------------------------------------------

def test_wrong_or_unreachable_mysql(mysql_env):
    wrong = run_cli("queue:size", env={"DB_USERNAME": "app_user"})
    one_line_error(wrong, f"Cannot connect to MySQL at {MYSQL[0]}:{MYSQL[1]}: Access denied for user 'app_user'")
    gone = run_cli("queue:work", "--stop-when-empty", env={"DB_PORT": str(free_port())})
    one_line_error(gone, "Cannot connect to MySQL at 127.0.0.1:")


# -- Redis -------------------------------------------------------------------------------------------

@pytest.fixture
def locked_redis():
    """A private redis-server whose password is REDIS_PASSWORD."""
    shutil.which("redis-server") or pytest.skip("redis-server is not installed")
    server = LocalRedis("--requirepass", SECRETS["REDIS_PASSWORD"]).start()
    yield server
    server.cleanup()


def test_wrong_or_unreachable_redis(locked_redis):
    port = str(locked_redis.port)
    env = {"REDIS_PORT": port, "REDIS_PASSWORD": "not-" + SECRETS["REDIS_PASSWORD"]}
    one_line_error(run_cli("queue:size", "redis", env=env), f"Cannot connect to Redis at 127.0.0.1:{port}: ")
    url = {"REDIS_URL": f"redis://:{SECRETS['REDIS_PASSWORD']}x@127.0.0.1:{port}/0", "REDIS_PASSWORD": ""}
    one_line_error(run_cli("queue:work", "redis", "--stop-when-empty", env=url),
                   f"Cannot connect to Redis at 127.0.0.1:{port}: ")
    closed = str(free_port())
    one_line_error(run_cli("queue:clear", "redis", env={"REDIS_PORT": closed}),
                   f"Cannot connect to Redis at 127.0.0.1:{closed}: Connection refused")
    one_line_error(run_cli("queue:size", "redis", env={"REDIS_HOST": "no-such-host.invalid"}),
                   "Cannot connect to Redis at no-such-host.invalid:6379: ")


def test_a_worker_losing_redis_logs_no_secret(locked_redis, log_file):
    """The worker connects with the password, then the server goes away under it."""
    name, path = log_file
    env = {"REDIS_PORT": str(locked_redis.port), "QUEUE_CONNECTION": "redis", "LOG_FILE": name}
    worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "--sleep", "0.1", "--max-time", "6"], cwd=ROOT,
                              env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while "Worker started" not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline and worker.poll() is None, "the worker did not start"
        time.sleep(0.1)
    locked_redis.stop()
    out, err = worker.communicate(timeout=60)
    assert "Lost the connection to Redis" in out
    assert_no_secret(out, err, path.read_text())


# -- MQTT --------------------------------------------------------------------------------------------

@pytest.fixture
def locked_broker(tmp_path):
    """A private Mosquitto that only lets `appuser` in, with MQTT_PASSWORD."""
    if not (shutil.which("mosquitto") and shutil.which("mosquitto_passwd")):
        pytest.skip("mosquitto is not installed")
    port = free_port()
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "appuser", SECRETS["MQTT_PASSWORD"]],
                   check=True, capture_output=True)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
                    "persistence false\nuser root\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and broker.poll() is None, "the private broker did not start"
            time.sleep(0.05)
    yield port
    broker.terminate()
    broker.wait(10)


def test_a_broker_refusing_the_credentials_or_unreachable(locked_broker):
    env = {"MQTT_PORT": str(locked_broker), "MQTT_USERNAME": "appuser",
           "MQTT_PASSWORD": "not-" + SECRETS["MQTT_PASSWORD"]}
    one_line_error(run_cli("run", env=env, timeout=30), f"Cannot connect to MQTT broker at 127.0.0.1:{locked_broker}: ")
    closed = str(free_port())
    one_line_error(run_cli("run", env={"MQTT_PORT": closed, "MQTT_CONNECT_TIMEOUT": "1"}, timeout=30),
                   f"Cannot connect to MQTT broker at 127.0.0.1:{closed}: ")


async def test_a_handler_failing_with_a_secret_is_logged_masked(log_file, capsys, monkeypatch):
    """The handler's exception is logged with its traceback, whose last line repeats the message."""
    require(MQTT)
    name, path = log_file
    prefix = topic_prefix()
    done = asyncio.Event()

    async def handler(payload):
        done.set()
        raise ConnectionError(f"broker said no to password {SECRETS['MQTT_PASSWORD']} (key {SECRETS['APP_KEY']})")

    router = Router()
    router.on(prefix + "/secret", handler)
    monkeypatch.setenv("LOG_FILE", name)
    async with create_app():                  # logging as `run` sets it up: stdout and LOG_FILE, secrets masked
        async with running_app(router, mqtt_config()):
            await publish(f"{prefix}/secret", "x")
            await asyncio.wait_for(done.wait(), 5)
            await asyncio.sleep(0.2)
    logged = path.read_text()
    assert "Handler failed on topic" in logged and "Traceback" in logged and "ConnectionError: broker said no" in logged
    assert_no_secret(logged, capsys.readouterr().out)
