"""Fixtures for outages: a FaultProxy in front of each real server, the environment pointed at it."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from tests.faults.proxy import FaultProxy
from tests.servers import MQTT, MYSQL, PGSQL, REDIS, require


@pytest.fixture
def redis_proxy(redis_env, monkeypatch) -> Iterator[FaultProxy]:
    """Redis (the suite's own db, flushed) reached through a proxy: REDIS_PORT is the proxy's."""
    with FaultProxy(REDIS[1]) as proxy:
        monkeypatch.setenv("REDIS_PORT", str(proxy.port))
        monkeypatch.setenv("QUEUE_CONNECTION", "redis")
        yield proxy


@pytest.fixture
def mysql_proxy(mysql_env, monkeypatch) -> Iterator[FaultProxy]:
    """A fresh MySQL database reached through a proxy: DB_PORT is the proxy's; it is also the queue."""
    with FaultProxy(MYSQL[1]) as proxy:
        monkeypatch.setenv("DB_PORT", str(proxy.port))
        monkeypatch.setenv("QUEUE_CONNECTION", "database")
        yield proxy


@pytest.fixture
def pgsql_proxy(pgsql_env, monkeypatch) -> Iterator[FaultProxy]:
    """A fresh PostgreSQL database reached through a proxy: DB_PORT is the proxy's (the wake-up
    listener's too); it is also the queue."""
    with FaultProxy(PGSQL[1]) as proxy:
        monkeypatch.setenv("DB_PORT", str(proxy.port))
        monkeypatch.setenv("QUEUE_CONNECTION", "database")
        yield proxy


@pytest.fixture
def mqtt_proxy(monkeypatch) -> Iterator[FaultProxy]:
    require(MQTT)
    with FaultProxy(MQTT[1]) as proxy:
        monkeypatch.setenv("MQTT_PORT", str(proxy.port))
        yield proxy


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)
