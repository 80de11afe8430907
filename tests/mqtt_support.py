"""Helpers for tests against the real broker: an in-process app, a publisher, a subscriber, and
`python main.py run` as a user starts it. (Broker outages go through tests/faults/proxy.py.)"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from core.config import MqttConfig
from core.mqtt import MqttApp, RunnerOptions, encode_payload
from core.router import Router
from tests.conftest import ROOT
from tests.servers import MQTT, free_port, reachable, stop_server

# `main.py run` serves the app's own routes (devices/+/status, ...) on the shared broker, so two such
# tests at once hear each other's messages: pytest-xdist (--dist loadgroup) runs them on one worker,
# one after the other.
APP_ROUTES = pytest.mark.xdist_group("app-routes")


def topic_prefix() -> str:
    """A prefix of its own per test, so tests never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:10]}"


def mqtt_config(**overrides: Any) -> MqttConfig:
    values: dict[str, Any] = {"host": MQTT[0], "port": MQTT[1], "shared_group": f"g{uuid.uuid4().hex[:8]}"}
    values.update(overrides)
    return MqttConfig(**values)


@asynccontextmanager
async def running_app(router: Router, config: MqttConfig | None = None,
                      options: RunnerOptions | None = None) -> AsyncIterator[MqttApp]:
    """The app serving `router` in this event loop, subscribed before the body runs, stopped after it."""
    app = MqttApp(router, config or mqtt_config(), options=options or RunnerOptions(first_delay=0.1, max_delay=0.5))
    task = asyncio.create_task(app.run(handle_signals=False))
    try:
        await wait_connected(app, task)
        yield app
    finally:
        app.stop()
        await asyncio.wait_for(task, 10)


async def wait_connected(app: MqttApp, task: asyncio.Task[None], timeout: float = 10) -> None:
    waiter = asyncio.create_task(app.connected.wait())
    done, _ = await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task in done:
            task.result()
        raise AssertionError(f"the app did not connect to the broker within {timeout}s")


async def publish(topic: str, payload: Any = None, qos: int = 1) -> None:
    async with aiomqtt.Client(*MQTT) as client:
        await client.publish(topic, encode_payload(payload), qos=qos)


@asynccontextmanager
async def subscribed(topic_filter: str) -> AsyncIterator[asyncio.Queue[tuple[str, Any]]]:
    """A queue of (topic, decoded payload) for every message on `topic_filter`, subscribed on entry."""
    received: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    async with aiomqtt.Client(*MQTT) as client:
        await client.subscribe(topic_filter, qos=1)

        async def read() -> None:
            async for message in client.messages:
                text = bytes(message.payload).decode()
                try:
                    value: Any = json.loads(text)
                except ValueError:
                    value = text
                await received.put((message.topic.value, value))

        reader = asyncio.create_task(read())
        try:
            yield received
        finally:
            reader.cancel()


class AppProcess:
    """`python main.py run` started as a user starts it, its output read line by line."""

    def __init__(self, env: dict[str, str] | None = None, argv: tuple[str, ...] = ("main.py", "run")) -> None:
        # A developer's .env must not point the app elsewhere or share a group with a running instance.
        defaults = {"MQTT_TLS": "false", "MQTT_SHARED_GROUP": f"g{uuid.uuid4().hex[:8]}", "MQTT_MAX_CONCURRENT": "100"}
        full_env = {**os.environ, **defaults, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, text: str, timeout: float = 10) -> str:
        """The first output line containing `text`, reading on until it appears."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if text in line:
                return line
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), deadline - time.monotonic())
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if text in line:
                return line
        raise AssertionError(f"{text!r} never appeared in the output of main.py run:\n{self.output}")

    def terminate(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int:
        """Send `sig`, then the exit code once the process is gone; the rest of its output is kept."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rest, _ = self.proc.communicate(timeout=timeout)
        self.lines.extend(rest.splitlines())
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LocalMosquitto:
    """A mosquitto of this test's own on a free port (tests/servers.py, free_port), for tests that stop
    the broker, flood it or configure it (TLS, limits). `config` lines are added to its listener's."""

    def __init__(self, *config: str, tls: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.config = config
        self.tls = tls
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "LocalMosquitto":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self) -> "LocalMosquitto":
        binary = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)
        if binary is None:
            pytest.skip("mosquitto is not installed")
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join([f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                                   # as root it would drop to user mosquitto, who cannot read the test's files
                                   "user root",
                                   *self.config]) + "\n")
        log = open(self.dir / "mosquitto.log", "ab")
        self.process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not reachable(("127.0.0.1", self.port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on {self.port}: {self.log()[-1500:]}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_server(self.process)
        self.process = None
