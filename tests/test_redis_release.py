"""Redis side of SPEC 9's store pieces: jobs an older release stored, and what a job leaves behind."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from bootstrap.app import create_app
from core.queue.redis import RedisQueue


@pytest.fixture
async def q(redis_env, monkeypatch) -> RedisQueue:
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    async with create_app() as app:
        yield await app.queue.connection()


def raw() -> str:
    return json.dumps({"uuid": str(uuid.uuid4()), "job": "x.Y"})


async def test_a_job_stored_without_a_push_time_counts_from_its_first_reservation(q):
    """An older release wrote <id>:seq as the bare sequence number: the job runs, and its push
    time is fixed at its first reservation, not moved at each one."""
    payload = raw()
    job_id = json.loads(payload)["uuid"]
    k = q.keys("old")
    await q.client.hset(k.jobs, mapping={job_id: payload, f"{job_id}:seq": 7})
    await q.client.zadd(k.ready, {job_id: 7})
    job = await q.reserve(["old"])
    assert (job.payload, job.releases) == (payload, 0)
    assert job.pushed_at == job.due_at == job.now and abs(job.now - time.time()) < 2
    assert await q.release(job, free=True)
    again = await q.reserve(["old"])
    assert (again.pushed_at, again.releases) == (job.pushed_at, 1)
    assert (await q.client.hget(k.jobs, f"{job_id}:seq")).split(" ")[0] == "7"      # its place in line kept


async def test_a_finished_job_leaves_no_field_behind(q):
    payload = raw()
    await q.push("clean", payload, delay=0)
    job = await q.reserve(["clean"])
    assert await q.release(job, free=True)
    assert await q.acknowledge(await q.reserve(["clean"]))
    k = q.keys("clean")
    assert await q.client.hgetall(k.state) == {} and await q.client.hgetall(k.jobs) == {}
    await q.push("clean", raw())
    assert await q.release(await q.reserve(["clean"]), 60, free=True)
    assert await q.clear("clean") == 1
    assert await q.client.hgetall(k.state) == {} and await q.client.hgetall(k.jobs) == {}
