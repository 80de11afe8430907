"""The chaos test: workers SIGKILLed at random while they run jobs, on SQLite, MySQL and Redis.

Bounded for CI (about 40 s per store); `make soak` runs the same driver longer (bench/soak.py).
"""
from __future__ import annotations

import os

import pytest

from tests.chaos.driver import ChaosPlan, evidence, run_chaos

VISIBILITY_TIMEOUT = 2      # low, so long jobs outlive it and only the heartbeat keeps them reserved

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "mysql", "redis"])
def store(request, monkeypatch) -> str:
    if request.param == "mysql":
        request.getfixturevalue("mysql_env")
    if request.param == "redis":
        request.getfixturevalue("redis_env")
    monkeypatch.setenv("QUEUE_CONNECTION", "redis" if request.param == "redis" else "database")
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", str(VISIBILITY_TIMEOUT))
    monkeypatch.setenv("APP_KEY", "chaos-test-key")
    return request.param


async def test_sigkilled_workers_lose_nothing_and_repeat_only_what_they_were_running(store, tmp_path, capsys):
    seed = int(os.environ.get("CHAOS_SEED", "") or 0) or None
    report = await run_chaos(store, ChaosPlan(seed=seed), tmp_path)
    with capsys.disabled():
        print("\n  " + report.line())
    assert report.ok, "\n".join([report.line(), *report.problems[:40], evidence(tmp_path, report)])
    # The scenario really happened: workers died mid-job, and long jobs outlived the visibility timeout.
    assert report.kills >= 4, report.line()
    assert report.cut + report.unacked >= 1, report.line()
    assert report.long_once >= 1, report.line()
    assert report.outcomes.get("failed-planned", 0) >= 1, report.line()
