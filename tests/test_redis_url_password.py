"""REDIS_URL with a password holding '#', '/', '?', '@', '%' or spaces, written as is (finding 15):
it connects, and no error line, log line or --help text shows it (SPEC 8)."""
from __future__ import annotations

import uuid

import pytest
import redis

from bootstrap.app import create_app
from core.config import load_config
from tests.conftest import ROOT, run_cli
from tests.redis_server import LocalRedis
from tests.servers import free_port

PASSWORDS = ["p#ss/w?rd-Secret1", "a@b/c@d-Secret2", "50% off /x?y#z-Secret3", " spaced out@host:1/-Secret4"]


def leaked(text: str, password: str) -> bool:
    """The password, or a telling piece of it (the part before its '-Secret' tag)."""
    return password in text or password.split("-Secret")[0].strip() in text or "Secret" in text


@pytest.fixture(scope="module")
def private_redis():
    server = LocalRedis().start()
    yield server
    server.cleanup()


@pytest.mark.parametrize("password", PASSWORDS)
async def test_such_a_url_connects(private_redis, monkeypatch, password):
    admin = redis.Redis(port=private_redis.port)
    admin.config_set("requirepass", password)            # the private server's, never the shared one's
    try:
        monkeypatch.setenv("REDIS_URL", f"redis://:{password}@127.0.0.1:{private_redis.port}/3")
        async with create_app() as app:
            conn = await app.queue.connection("redis")
            await conn.push("pw", '{"uuid": "00000000-0000-4000-8000-000000000001"}')
            assert (await conn.sizes(["pw"]))["pw"].pending == 1
        assert set(load_config().secrets()) >= {password}
    finally:
        redis.Redis(port=private_redis.port, password=password).config_set("requirepass", "")


@pytest.mark.parametrize("password", PASSWORDS)
def test_no_output_shows_it(tmp_path, password):
    port = free_port()                                    # nothing listens there
    name = f"url-password-{uuid.uuid4().hex[:8]}.log"     # LOG_FILE is a file under storage/logs/
    log = ROOT / "storage" / "logs" / name
    env = {"REDIS_URL": f"redis://:{password}@127.0.0.1:{port}/0", "LOG_FILE": name}
    outputs = []
    for command in (["queue:size", "redis"], ["queue:work", "redis", "--stop-when-empty"], ["queue:restart", "redis"]):
        result = run_cli(*command, env=env, timeout=30)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == \
            [f"Cannot connect to Redis at 127.0.0.1:{port}: Connection refused"]
        outputs += [result.stdout, result.stderr]
    outputs += [run_cli(*command, "--help", env=env).stdout for command in ("queue:work", "queue:size", "run")]
    outputs.append(log.read_text() if log.exists() else "")
    log.unlink(missing_ok=True)
    assert not any(leaked(text, password) for text in outputs)
