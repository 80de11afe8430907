"""The contract as workers see it: real `python main.py queue:work` processes on every connection."""
from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from tests.conftest import run_cli
from tests.jobs.contract_jobs import RecordRun, StallFirstAttempt, read_runs

WORKERS = 4
JOBS_PER_WORKER = 2000

pytestmark = pytest.mark.slow


async def wait_for(predicate, timeout: float, what: str) -> None:
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_four_workers_run_each_job_exactly_once(backend, tmp_path):
    runs = str(tmp_path / "runs")
    total = WORKERS * JOBS_PER_WORKER
    ids = await RecordRun.dispatch_many([{"path": runs, "n": n} for n in range(total)])
    workers = [backend.start_worker("--queue", "contract", "--concurrency", "4", "--sleep", "0.05",
                                    "--stop-when-empty") for _ in range(WORKERS)]
    try:
        for worker in workers:
            assert await asyncio.to_thread(worker.wait, 150) == 0, backend.worker_logs()[-3000:]
    finally:
        for worker in workers:
            backend.kill(worker)

    done = read_runs(runs)
    assert len(done) == total
    assert Counter(job_id for job_id, _ in done) == Counter(ids)          # every job once, none twice
    assert {attempt for _, attempt in done} == {1}
    sizes = await backend.conn.sizes(["contract"])
    assert sizes["contract"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await (await backend.app.queue.failed_store()).all() == []


async def test_a_sigkilled_workers_job_comes_back_with_its_attempt_counted(backend, tmp_path):
    runs = str(tmp_path / "runs")
    job_id = await StallFirstAttempt.dispatch(path=runs)
    worker = backend.start_worker("--queue", "contract", "--sleep", "0.05")
    try:
        await wait_for(lambda: read_runs(runs), 20, "the first attempt to start")
    finally:
        backend.kill(worker)                                    # SIGKILL: no chance to release the job
    sizes = await backend.conn.sizes(["contract"])
    assert sizes["contract"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 1}

    await asyncio.sleep(3.3)                                    # the visibility timeout (2 s) lapses
    result = await asyncio.to_thread(run_cli, "queue:work", backend.connection, "--queue", "contract",
                                     "--stop-when-empty", "--sleep", "0.05")
    assert result.returncode == 0, result.stdout + result.stderr
    assert read_runs(runs) == [(job_id, 1), (job_id, 2)]
    sizes = await backend.conn.sizes(["contract"])
    assert sizes["contract"].as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert await (await backend.app.queue.failed_store()).all() == []


async def test_size_clear_and_restart_commands(backend, tmp_path):
    await RecordRun.dispatch_many([{"path": str(tmp_path / "runs")} for _ in range(3)])
    await RecordRun.dispatch(path=str(tmp_path / "runs")).delay(60)
    size = await asyncio.to_thread(run_cli, "queue:size", backend.connection, "--queue", "contract", "--json")
    assert size.returncode == 0, size.stderr
    assert '"contract": {"pending": 3, "delayed": 1, "reserved": 0, "waiting": 0}' in size.stdout.replace("\n", "")

    cleared = await asyncio.to_thread(run_cli, "queue:clear", backend.connection, "--queue", "contract")
    assert cleared.returncode == 0, cleared.stderr
    assert (await backend.conn.sizes(["contract"]))["contract"].as_dict() == {"pending": 0, "delayed": 0,
                                                                             "reserved": 0}

    worker = backend.start_worker("--queue", "contract", "--sleep", "0.05")
    try:
        await asyncio.sleep(1.5)                                # let it start and reach its loop
        restarted = await asyncio.to_thread(run_cli, "queue:restart")
        assert restarted.returncode == 0, restarted.stderr
        assert await asyncio.to_thread(worker.wait, 15) == 0
    finally:
        backend.kill(worker)


async def test_retry_puts_a_failed_job_back_on_its_connection_with_attempts_reset(backend, tmp_path):
    job_id = await RecordRun.dispatch(path=str(tmp_path / "runs"))
    conn = backend.conn
    first = await conn.reserve(["contract"])
    await conn.release(first)
    second = await conn.reserve(["contract"])
    assert second.attempts == 2
    assert await conn.fail(second, "RuntimeError: boom")
    failed = await (await backend.app.queue.failed_store()).all()
    assert [(f.uuid, f.connection) for f in failed] == [(job_id, backend.connection)]

    retried = await asyncio.to_thread(run_cli, "queue:retry", job_id)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    again = await conn.reserve(["contract"])
    assert (again.payload, again.attempts) == (second.payload, 1)          # same job, same id, attempts reset
    assert await (await backend.app.queue.failed_store()).all() == []
