"""TLS with MQTT_CA_FILE, MQTT_CERT_FILE and MQTT_KEY_FILE (SPEC 18), against a private mosquitto that
requires a client certificate: a CA, a server and a client certificate made here with the openssl CLI."""
from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from core.router import Router
from tests.conftest import run_cli
from tests.mqtt_support import LocalMosquitto, mqtt_config, running_app


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificate(name: str, cn: str, cwd: Path, san: str | None = None) -> None:
    """`name`.key and `name`.crt, signed by ca.crt."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)
    extra = []
    if san:
        (cwd / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *extra, cwd=cwd)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Test CA", cwd=d)
    make_certificate("server", "localhost", d, san="IP:127.0.0.1,DNS:localhost")
    make_certificate("client", "app", d)
    return d


@pytest.fixture
def tls_broker(certificates):
    with LocalMosquitto(f"cafile {certificates / 'ca.crt'}", f"certfile {certificates / 'server.crt'}",
                        f"keyfile {certificates / 'server.key'}", "require_certificate true") as broker:
        yield broker


def device(certificates: Path, port: int) -> aiomqtt.Client:
    context = ssl.create_default_context(cafile=str(certificates / "ca.crt"))
    context.load_cert_chain(str(certificates / "client.crt"), str(certificates / "client.key"))
    return aiomqtt.Client("127.0.0.1", port, tls_context=context)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_the_app_connects_with_a_client_certificate_and_a_job_publishes_over_tls(certificates, tls_broker,
                                                                                       monkeypatch, protocol):
    files = {"ca_file": str(certificates / "ca.crt"), "cert_file": str(certificates / "client.crt"),
             "key_file": str(certificates / "client.key")}
    got: asyncio.Queue = asyncio.Queue()

    async def status(device_id, payload):
        await got.put((device_id, payload))

    router = Router()
    router.on("devices/{device_id}/status", status, qos=1)
    config = mqtt_config(port=tls_broker.port, tls=True, protocol=protocol, **files)
    async with running_app(router, config), device(certificates, tls_broker.port) as client:
        await client.publish("devices/d1/status", b'{"ok": true}', qos=1)
        assert await asyncio.wait_for(got.get(), 10) == ("d1", {"ok": True})

        # A job run in this process publishes through the same settings (MQTT_* from the environment).
        for key, value in {"MQTT_PORT": str(tls_broker.port), "MQTT_TLS": "true", "MQTT_PROTOCOL": protocol,
                           "MQTT_CA_FILE": files["ca_file"], "MQTT_CERT_FILE": files["cert_file"],
                           "MQTT_KEY_FILE": files["key_file"]}.items():
            monkeypatch.setenv(key, value)
        from bootstrap.app import create_app
        from tests.jobs.mqtt_jobs import PublishingJob

        async with create_app():
            await PublishingJob.dispatch_sync(topic="devices/d2/status", payload={"from": "job"})
        assert await asyncio.wait_for(got.get(), 10) == ("d2", {"from": "job"})


def test_run_without_the_client_certificate_is_refused_in_one_line(certificates, tls_broker):
    result = run_cli("run", env={"MQTT_PORT": str(tls_broker.port), "MQTT_CA_FILE": str(certificates / "ca.crt"),
                                 "MQTT_CONNECT_TIMEOUT": "1"}, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Cannot connect to MQTT broker at 127.0.0.1:{tls_broker.port}: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stdout


async def test_a_job_publishing_without_the_client_certificate_fails_with_the_brokers_reason(certificates,
                                                                                              tls_broker, monkeypatch):
    """The jobs' publisher, like `run`, says why the broker refused it (the TLS alert that comes
    before CONNACK), at once, instead of 'timed out' after MQTT_CONNECT_TIMEOUT."""
    import time

    from bootstrap.app import create_app
    from core.errors import ConnectionFailed
    from tests.jobs.mqtt_jobs import PublishingJob

    for key, value in {"MQTT_PORT": str(tls_broker.port), "MQTT_CA_FILE": str(certificates / "ca.crt"),
                       "MQTT_CONNECT_TIMEOUT": "20"}.items():
        monkeypatch.setenv(key, value)
    async with create_app():
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as refused:
            await PublishingJob.dispatch_sync(topic="devices/d3/status", payload={})
    assert "certificate required" in str(refused.value) and "timed out" not in str(refused.value)
    assert time.monotonic() - started < 20          # not the connect timeout


def test_a_broker_certificate_from_another_ca_is_refused(certificates, tls_broker, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Other CA", cwd=other)
    result = run_cli("run", env={"MQTT_PORT": str(tls_broker.port), "MQTT_CA_FILE": str(other / "ca.crt"),
                                 "MQTT_CERT_FILE": str(certificates / "client.crt"),
                                 "MQTT_KEY_FILE": str(certificates / "client.key"), "MQTT_CONNECT_TIMEOUT": "1"},
                     timeout=30)
    assert result.returncode == 1
    assert "certificate verify failed" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("env, message", [
    ({"MQTT_CA_FILE": "/nonexistent/ca.crt"}, "MQTT_CA_FILE: no such file: /nonexistent/ca.crt"),
    ({"MQTT_TLS": "true", "MQTT_KEY_FILE": "README.md"},
     "MQTT_KEY_FILE is set without MQTT_CERT_FILE (the client certificate it belongs to)"),
])
def test_tls_settings_that_cannot_work_are_one_line_and_exit_1(env, message):
    result = run_cli("run", env=env, timeout=30)
    assert (result.returncode, result.stderr.strip()) == (1, message)
