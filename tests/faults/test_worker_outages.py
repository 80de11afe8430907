"""Workers on Redis, MySQL and PostgreSQL while their connection is cut, or silently partitioned, then restored:
the outage is logged once, the worker reconnects with backoff and goes on, and every job runs once."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from bootstrap.app import create_app
from core.worker import Worker, WorkerOptions
from tests.conftest import ROOT
from tests.faults.conftest import eventually
from tests.faults.proxy import FaultProxy
from tests.jobs.contract_jobs import read_runs
from tests.jobs.outage_jobs import OutageJob

pytestmark = pytest.mark.slow


@pytest.fixture(params=["redis", "mysql", "pgsql"])
def store(request, monkeypatch) -> tuple[FaultProxy, str]:
    """The queue's store behind a proxy, and how the worker names it in its log."""
    # Reservations outlast an outage with room to spare (a blackholed Redis call takes its 10s
    # socket timeout to fail), so only the outage itself is on trial here.
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "30")
    monkeypatch.setenv("DB_TIMEOUT", "2")
    proxy = request.getfixturevalue(f"{request.param}_proxy")
    name = {"redis": "Redis", "mysql": "MySQL", "pgsql": "PostgreSQL"}[request.param]
    return proxy, f"{name} at 127.0.0.1:{proxy.port}"


async def dispatch_jobs(runs: str, count: int, seconds: float = 0.2) -> list[str]:
    return [await OutageJob.dispatch(path=runs, seconds=seconds) for _ in range(count)]


async def assert_each_ran_once_and_nothing_is_left(app, runs: str, ids: list[str]) -> None:
    counts = Counter(job_id for job_id, _ in read_runs(runs))
    assert counts == {job_id: 1 for job_id in ids}, "a job was lost or ran twice"
    conn = await app.queue.connection()
    assert (await conn.sizes(["outage"]))["outage"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await (await app.queue.failed_store()).all() == []


def all_ran(runs: str, ids: list[str]):
    return lambda: {job_id for job_id, _ in read_runs(runs)} >= set(ids)


async def test_an_in_process_worker_rides_out_a_cut(store, tmp_path, caplog):
    proxy, label = store
    runs = str(tmp_path / "runs")
    with caplog.at_level(logging.INFO):
        async with create_app() as app:
            ids = await dispatch_jobs(runs, 12)
            worker = Worker(app, WorkerOptions(queues=("outage",), concurrency=2, sleep=0.2))
            task = asyncio.create_task(worker.run())
            try:
                await eventually(lambda: len(read_runs(runs)) >= 3, 15, "the first jobs to run")
                proxy.cut()                               # jobs are running: their acknowledges must wait
                await asyncio.sleep(2)
                proxy.restore()
                await eventually(all_ran(runs, ids), 30, "every job to run after the outage")
                await eventually(lambda: not worker._running, 10, "the last jobs to finish")
            finally:
                worker.stop("test over")
                await asyncio.wait_for(task, 30)
            await assert_each_ran_once_and_nothing_is_left(app, runs, ids)
    worker_lines = [r for r in caplog.records if r.name == "worker" and r.levelno >= logging.INFO]
    text = [r.getMessage() for r in worker_lines]
    assert sum(m.startswith(f"Lost the connection to {label}: ") for m in text) == 1, text
    assert sum(m.startswith(f"Connection to {label} is back after ") for m in text) == 1, text
    assert not [m for m in text if "could not" in m or "Queue connection error" in m], text
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_a_queue_work_process_rides_out_a_cut_and_a_partition(store, tmp_path):
    proxy, label = store
    runs, log = str(tmp_path / "runs"), tmp_path / "worker.log"
    lost, back = f"Lost the connection to {label}: ", f"Connection to {label} is back after "

    def count(text: str) -> int:
        return log.read_text().count(text)

    async with create_app() as app:
        ids = await dispatch_jobs(runs, 24)
        with open(log, "w") as out:
            worker = subprocess.Popen([sys.executable, "main.py", "queue:work", "--queue", "outage", "--concurrency",
                                       "2", "--sleep", "0.2"], cwd=ROOT, env=dict(os.environ), stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            await eventually(lambda: len(read_runs(runs)) >= 3, 20, "the first jobs to run")
            proxy.cut()
            await eventually(lambda: count(lost) == 1, 10, "the worker to report the outage")
            await asyncio.sleep(1)
            proxy.restore()
            await eventually(lambda: count(back) == 1, 20, "the worker to reconnect")
            await eventually(lambda: len(read_runs(runs)) >= 12, 20, "more jobs to run")

            proxy.blackhole()                             # sockets stay open; nothing answers
            await eventually(lambda: count(lost) == 2, 25, "the worker to notice the partition")
            proxy.restore()
            await eventually(lambda: count(back) == 2, 20, "the worker to reconnect after the partition")
            await eventually(all_ran(runs, ids), 30, "every job to run")
            await eventually(lambda: count("DONE") == len(ids), 20, "the last jobs to finish")
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(worker.wait, 30)
            finally:
                if worker.poll() is None:
                    worker.kill()
        assert code == 0
        await assert_each_ran_once_and_nothing_is_left(app, runs, ids)
    output = log.read_text()
    assert count(lost) == 2 and count(back) == 2, output
    assert "Traceback" not in output and "Queue connection error" not in output, output


async def test_a_redis_workers_heartbeat_renews_while_the_failed_store_is_away(redis_env, mysql_proxy, monkeypatch,
                                                                                 tmp_path):
    """Redis queue, failed-job store on MySQL. A worker's heartbeat opens a connection of its own; that
    opened the failed store too, so a worker whose failed store went away just as it started had a
    heartbeat that could renew nothing, and a job longer than the visibility timeout ran twice. Two
    workers start during such a cut (the failed store already open in their own connections): the
    job runs once, renewed all along."""
    monkeypatch.setenv("QUEUE_CONNECTION", "redis")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "2")
    runs = str(tmp_path / "runs")
    async with create_app() as first, create_app() as second:
        for app in (first, second):
            await app.queue.connection()
            await app.queue.failed_store()             # open: only the heartbeats' opens meet the cut
        job_id = await OutageJob.dispatch(path=runs, seconds=4.0)
        mysql_proxy.cut()
        workers = [Worker(app, WorkerOptions(queues=("outage",), sleep=0.2)) for app in (first, second)]
        tasks = [asyncio.create_task(worker.run()) for worker in workers]
        try:
            await eventually(lambda: len(read_runs(runs)) >= 1, 15, "the job to start")
            await asyncio.sleep(5)                     # it runs 4 s, twice the visibility timeout, the store still cut
            mysql_proxy.restore()
            await eventually(lambda: not any(w._running for w in workers), 15, "the job to finish")
            sizes = (await (await first.queue.connection()).sizes(["outage"]))["outage"].as_dict()
        finally:
            for worker in workers:
                worker.stop("test over")
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert read_runs(runs) == [(job_id, 1)], "the job ran twice: its reservation lapsed while it ran"
        assert sizes == {"pending": 0, "delayed": 0, "reserved": 0}
