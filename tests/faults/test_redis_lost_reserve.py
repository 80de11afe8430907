"""Issue 11, finding 9 on Redis: a reserve whose answer is lost (the server ran it, the connection
dropped before the reply came back) must not burn a try. The client retries the call on a fresh
connection; with a claim, that retry hands over the jobs the first run took, their attempt
counted once, instead of reserving others and leaving the first ones to lapse."""
from __future__ import annotations

import asyncio
import json
import uuid

import redis

from bootstrap.app import create_app
from tests.faults.conftest import eventually
from tests.servers import REDIS


def raw() -> str:
    return json.dumps({"uuid": str(uuid.uuid4()), "job": "x.Y"})


async def test_a_reserve_whose_answer_is_lost_hands_over_the_jobs_it_took(redis_proxy, redis_env):
    async with create_app() as app:
        q = await app.queue.connection()
        await q.push_many("lost", [raw() for _ in range(3)])
        assert await q.reserve(["other"]) is None    # the script is loaded (else a NOSCRIPT is what gets lost)
        with redis.Redis(*REDIS, db=redis_env) as server:
            redis_proxy.lose_replies()
            call = asyncio.ensure_future(q.reserve_many(["lost"], 2, claim=uuid.uuid4().hex))
            await eventually(lambda: server.zcard("queues:{lost}:reserved") == 2, 10, "the reserve to run")
            redis_proxy.cut()
            redis_proxy.restore()
            jobs = await asyncio.wait_for(call, 20)
            assert [j.attempts for j in jobs] == [1, 1]
            assert server.zcard("queues:{lost}:reserved") == 2 and server.zcard("queues:{lost}") == 1
            assert all(await q.acknowledge_many(jobs))


async def test_a_blocked_reserve_whose_answer_is_lost_hands_over_the_job_it_took(redis_proxy, redis_env):
    async with create_app() as app:
        q = await app.queue.connection()
        with redis.Redis(*REDIS, db=redis_env) as server:
            call = asyncio.ensure_future(q.reserve_wait(["lost"], timeout=10, claim=uuid.uuid4().hex))
            await asyncio.sleep(0.2)                    # blocked in the pipelined BLPOP + reserve
            redis_proxy.lose_replies()
            pusher = type(q)(q.config.__class__(host=REDIS[0], port=REDIS[1], db=redis_env), q.failed)
            await pusher.open()                          # straight to the server, not through the proxy
            try:
                await pusher.push("lost", raw())
            finally:
                await pusher.close()
            await eventually(lambda: server.zcard("queues:{lost}:reserved") == 1, 10, "the reserve to run")
            redis_proxy.cut()
            redis_proxy.restore()
            job = await asyncio.wait_for(call, 20)
            assert job is not None and job.attempts == 1
            assert await q.acknowledge(job)
