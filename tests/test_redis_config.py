"""Configuring the Redis connection (REDIS_*, REDIS_URL with rediss://) and what users see when it fails."""
from __future__ import annotations

import subprocess

import pytest
import redis

from bootstrap.app import create_app
from core.errors import ConnectionFailed
from tests.conftest import run_cli
from tests.redis_server import LocalRedis
from tests.servers import free_port

PASSWORD = "s3cret-Redis-pw"


@pytest.fixture
def closed_port():
    return free_port()                 # this process's own: nothing will listen there


@pytest.fixture
def locked_redis():
    server = LocalRedis("--requirepass", PASSWORD).start()
    yield server
    server.cleanup()


async def open_redis():
    async with create_app() as app:
        conn = await app.queue.connection("redis")
        await conn.push("cfg", '{"uuid": "00000000-0000-4000-8000-000000000001"}')
        return (await conn.sizes(["cfg"]))["cfg"].pending


@pytest.mark.parametrize("how", ["port", "url", "cluster-url"])
async def test_unreachable_redis_is_one_clear_error(closed_port, monkeypatch, how):
    if how == "port":
        monkeypatch.setenv("REDIS_PORT", str(closed_port))
    else:
        scheme = "redis+cluster" if how == "cluster-url" else "redis"
        monkeypatch.setenv("REDIS_URL", f"{scheme}://:{PASSWORD}@127.0.0.1:{closed_port}")
    with pytest.raises(ConnectionFailed) as caught:
        await open_redis()
    assert str(caught.value) == f"Cannot connect to Redis at 127.0.0.1:{closed_port}: Connection refused"


@pytest.mark.parametrize("command", [["queue:size", "redis"], ["queue:clear", "redis"], ["queue:restart", "redis"],
                                     ["queue:work", "redis", "--stop-when-empty"]])
def test_every_command_exits_non_zero_with_one_line_and_no_password(closed_port, command):
    env = {"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{closed_port}/0", "REDIS_PASSWORD": PASSWORD}
    result = run_cli(*command, env=env, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"Cannot connect to Redis at 127.0.0.1:{closed_port}: Connection refused"]
    assert PASSWORD not in result.stdout + result.stderr


async def test_redis_password_opens_a_protected_server(locked_redis, monkeypatch):
    monkeypatch.setenv("REDIS_PORT", str(locked_redis.port))
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    monkeypatch.setenv("REDIS_DB", "4")
    assert await open_redis() == 1
    check = redis.Redis(port=locked_redis.port, password=PASSWORD, db=4)
    assert check.exists("queues:{cfg}") == 1
    check.close()


async def test_a_wrong_password_is_a_clear_error_without_the_password(locked_redis, monkeypatch):
    monkeypatch.setenv("REDIS_PORT", str(locked_redis.port))
    monkeypatch.setenv("REDIS_PASSWORD", "not-" + PASSWORD)
    with pytest.raises(ConnectionFailed) as caught:
        await open_redis()
    message = str(caught.value)
    assert message.startswith(f"Cannot connect to Redis at 127.0.0.1:{locked_redis.port}: ")
    assert PASSWORD not in message


async def test_redis_url_with_password_and_db(locked_redis, monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/6")
    assert await open_redis() == 1
    check = redis.Redis(port=locked_redis.port, password=PASSWORD, db=6)
    assert check.exists("queues:{cfg}") == 1
    check.close()


@pytest.fixture
def tls_redis(tmp_path):
    """A redis-server that speaks only TLS, with a self-signed certificate made for the test."""
    key, cert = tmp_path / "redis.key", tmp_path / "redis.crt"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                           "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                           "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("openssl could not make a test certificate")
    server = LocalRedis("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                        "--tls-auth-clients", "no", tls=True).start()
    yield server, cert
    server.cleanup()


async def test_rediss_url_connects_over_tls(tls_redis, monkeypatch):
    server, cert = tls_redis
    monkeypatch.setenv("REDIS_URL", f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={cert}")
    assert await open_redis() == 1
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{server.port}/0")      # plain text is refused
    with pytest.raises(ConnectionFailed):
        await open_redis()
