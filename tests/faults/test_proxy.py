"""The fault proxy itself: each fault does to a real client what it claims to."""
from __future__ import annotations

import socket
import time

import pytest

from tests.faults.proxy import FaultProxy
from tests.servers import REDIS, require


def ping(port: int, timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        return answer(s)


def answer(s: socket.socket) -> bytes:
    s.sendall(b"PING\r\n")
    return s.recv(64)


def answer_on_dropped(s: socket.socket) -> bytes:
    """What a connection that was reset answers: nothing (an empty read or a reset)."""
    try:
        return answer(s)
    except ConnectionError:
        return b""


def test_forwards_cuts_blackholes_and_restores():
    require(REDIS)
    with FaultProxy(REDIS[1]) as proxy:
        assert ping(proxy.port) == b"+PONG\r\n"
        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        assert answer(live) == b"+PONG\r\n"

        proxy.cut()
        with pytest.raises(ConnectionRefusedError):
            ping(proxy.port)
        assert answer_on_dropped(live) == b""        # the live connection was reset
        live.close()

        proxy.restore()
        assert ping(proxy.port) == b"+PONG\r\n"

        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(TimeoutError):            # connected, but no answer comes
            ping(proxy.port, timeout=0.5)
        assert time.monotonic() - started < 2

        proxy.restore()
        assert ping(proxy.port) == b"+PONG\r\n"
        assert proxy.accepted == 5


def test_lost_replies_still_reach_the_server(redis_env):
    import redis

    key = f"proxy-test-{time.monotonic_ns()}"
    direct = redis.Redis(*REDIS, db=redis_env)
    with FaultProxy(REDIS[1]) as proxy:
        proxy.lose_replies()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5) as s:
            s.sendall(f"SELECT {redis_env}\r\nSET {key} 1 EX 60\r\n".encode())
            with pytest.raises(TimeoutError):
                s.recv(64)
    try:
        assert direct.get(key) == b"1"
    finally:
        direct.delete(key)
        direct.close()
