"""The Redis queue's own connection for script calls (core/queue/redis_lane.py): every answer goes
to the call that asked, whatever happens to the connection in between."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import pytest
import redis
from redis import exceptions as redis_errors

from bootstrap.app import create_app
from tests.redis_server import LocalRedis

# Keeps the server busy for ARGV[1] seconds (a script blocks every other client meanwhile).
STALL = """
local t = redis.call('TIME'); local start = t[1] + t[2] / 1e6
repeat t = redis.call('TIME') until t[1] + t[2] / 1e6 - start >= tonumber(ARGV[1])
return 1
"""


def raw() -> str:
    return json.dumps({"uuid": str(uuid.uuid4()), "job": "x.Y"})


@pytest.fixture(scope="module")
def private_redis():
    """A server of this module's own: the tests stall it, kill its clients and flush its scripts,
    which on the shared server would hit every other test process (and anything else) using it."""
    server = LocalRedis().start()
    yield server
    server.cleanup()


@pytest.fixture
def server(private_redis):
    """A plain client of the private server, emptied for this test, beside the queue's."""
    with redis.Redis(port=private_redis.port) as client:
        client.flushall()
        yield client


@pytest.fixture
async def queue(server, private_redis, monkeypatch):
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(private_redis.port))
    async with create_app() as app:
        yield await app.queue.connection()


async def pending(q, queue: str) -> int:
    return (await q.sizes([queue]))[queue].pending


async def test_concurrent_calls_each_get_their_own_answer(queue):
    for i in range(1, 21):
        await queue.push_many(f"q{i}", [raw() for _ in range(i)])
    # 20 size calls and 300 pushes at once: one takes the lane, the rest share the pool (more
    # calls than it has connections: they wait for one, none fails with "Too many connections").
    sizes = [pending(queue, f"q{i}") for i in range(1, 21)]
    pushes = [queue.push("more", raw()) for _ in range(300)]
    answers = await asyncio.gather(*sizes, *pushes)
    assert answers[:20] == list(range(1, 21))
    assert await pending(queue, "more") == 300


async def test_a_call_cancelled_in_flight_leaves_no_answer_for_the_next_call(queue, server):
    await queue.push_many("first", [raw() for _ in range(3)])
    stall = threading.Thread(target=server.eval, args=(STALL, 0, 0.5))
    stall.start()
    time.sleep(0.1)                      # the server is now busy for 0.4 s more
    call = asyncio.create_task(pending(queue, "first"))
    await asyncio.sleep(0.1)             # sent; its answer comes once the server is free
    call.cancel()
    stall.join()
    await queue.push_many("second", [raw() for _ in range(5)])
    assert await pending(queue, "second") == 5
    assert await pending(queue, "first") == 3


async def test_a_connection_closed_by_the_server_is_replaced_without_an_error(queue, server):
    await queue.push("killed", raw())
    killed = server.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    await queue.push("killed", raw())    # the lane's connection is gone: this call still succeeds
    assert await pending(queue, "killed") == 2


async def test_scripts_forgotten_by_the_server_are_loaded_again(queue, server):
    await queue.push("flushed", raw())
    server.script_flush()                # as after a restart
    await queue.push("flushed", raw())
    assert await pending(queue, "flushed") == 2


@pytest.fixture
def short_socket_timeout(monkeypatch):
    monkeypatch.setattr("core.queue.redis.SOCKET_TIMEOUT", 1.5)


async def test_a_server_that_stops_answering_raises_a_timeout_after_the_socket_timeout(
        short_socket_timeout, redis_proxy):
    async with create_app() as app:
        q = await app.queue.connection()
        await q.push("silent", raw())
        redis_proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(redis_errors.TimeoutError):
            await asyncio.wait_for(pending(q, "silent"), 10)
        waited = time.monotonic() - started
        assert 1.4 <= waited <= 3.5, waited
        redis_proxy.restore()
        assert await pending(q, "silent") == 1      # and the next call opens a fresh connection
