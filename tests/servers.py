"""Real servers the tests use, and how a test learns one is absent (skip, or fail under CI=true)."""
from __future__ import annotations

import os
import socket
import uuid

import pytest

MYSQL = ("127.0.0.1", int(os.environ.get("TEST_MYSQL_PORT", "3306")))
REDIS = ("127.0.0.1", int(os.environ.get("TEST_REDIS_PORT", "6379")))
MQTT = ("127.0.0.1", int(os.environ.get("TEST_MQTT_PORT", "1883")))
NAMES = {MYSQL: "MySQL/MariaDB", REDIS: "Redis", MQTT: "the MQTT broker"}


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


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"
