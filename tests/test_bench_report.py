"""The benchmark's report (bench/report.py, bench/targets.py) from the results of one run: each
store's targets compared with the peers on that store, issue 14's targets checked, and a target
that cannot run reported as not run with its reason."""
from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

import pytest

from bench import harness, report

REFERENCE = {"rate": 10_000.0, "rates": [10_000.0], "pings": 10_000, "redis_py": "8"}
MACHINE = {"date": "today", "cpu": "cpu", "cores": 2, "memory_gb": 1, "os": "os", "python": "3.11",
           "redis": "7", "mariadb": "10", "postgresql": "15", "load_start": [1.0], "load_end": [1.0], "seconds": 1}


def target(name: str, best: float, p50: float = 1.0, **extra: Any) -> dict[str, Any]:
    """A harness.Result as a dict: one c=10 run at `best` jobs/s, latency samples around p50."""
    return {"name": name, "version": "1", "jobs": 1000, "enqueue": best, "enqueue_jobs": 1000, "bulk": None,
            "bulk_jobs": 0, "bulk_label": "", "enqueue_label": "enqueue()", "latency_label": "defaults",
            "throughput": [{"label": "c=10", "concurrency": 10, "copies": 1, "of": 1000, "jobs": 1000, "rate": best,
                            "partial": False, "rss_mb": 30.0}],
            "extra": [], "latency_ms": [p50] * 10, "long_idle_ms": [], "errors": [], "seconds": {}, **extra}


def wake(idle_p50: dict[str, float], dispatch: dict[str, tuple[float, float]]) -> dict[str, Any]:
    return {"name": "ours wake-up", "switch": "DB_WAKE=off", "dispatchers": 16, "dispatch_jobs": 100,
            "idle_probes": 10, "errors": [],
            "idle": [{"connection": c, "mode": "on", "samples": [p50] * 10, "worker": "queue:work"}
                     for c, p50 in idle_p50.items()],
            "dispatch": [{"connection": c, "mode": mode, "rates": [rate], "rate": rate}
                         for c, (on, off) in dispatch.items() for mode, rate in (("on", on), ("off", off))]}


def build(results: list[dict[str, Any]]) -> dict[str, Any]:
    return report.build(results, REFERENCE, MACHINE, 1000)


def targets_14(data: dict[str, Any]) -> dict[str, Any]:
    return {t["target"]: t for t in data["targets_14"]}


def test_each_store_is_compared_with_the_peers_on_that_store() -> None:
    data = build([target("ours (redis)", 10_000), target("taskiq (list)", 3_000), target("asyncmq", 400),
                  target("ours (pgsql)", 2_000), target("chancy (pgsql)", 50_000), target("procrastinate (pgsql)", 150),
                  target("ours (sqlite)", 5_000), target("dbjobq (sqlite)", 100)])

    # a PostgreSQL peer faster than every Redis peer is not the Redis table's best peer
    assert data["fastest_peer"]["best"] == ("taskiq (list)", 3_000)
    assert data["fastest_database_peer"]["pgsql"]["best"] == ("chancy (pgsql)", 50_000)
    assert data["fastest_database_peer"]["sqlite"]["best"] == ("dbjobq (sqlite)", 100)
    text = report.render(data)
    assert "| **ours (pgsql) / best peer** |" in text and "**0.040x**" in text       # 2,000 / 50,000
    assert "| **ours (sqlite) / best peer** |" in text and "**50.00x**" in text      # 5,000 / 100
    assert "| **ours (redis) / best peer** |" in text and "**3.33x**" in text        # 10,000 / 3,000


def test_issue_14_targets_are_checked_against_one_run() -> None:
    routemq = target("routemq (mysql)", 100)
    data = build([target("ours (redis)", 10_000), target("asyncmq", 6_000), target("ours (pgsql)", 2_500),
                  target("chancy (pgsql)", 1_000), target("procrastinate (pgsql)", 1_500), routemq,
                  wake({"pgsql": 8.0, "sqlite": 25.0, "mysql": 19.0},
                       {"pgsql": (180.0, 400.0), "sqlite": (950.0, 1_000.0), "mysql": (880.0, 1_000.0)})])
    checks = targets_14(data)

    pg_peers = checks["PostgreSQL processing >= 2x the faster of Chancy and procrastinate"]
    assert pg_peers["met"] is False and "procrastinate (pgsql)" in pg_peers["detail"] and "1.67x" in pg_peers["detail"]
    assert checks["PostgreSQL processing >= 10x RouteMQ's database driver"]["met"] is True        # 25x
    assert checks["idle dispatch-to-start p50 on pgsql < 10 ms (from 1 s)"]["met"] is True
    assert checks["idle dispatch-to-start p50 on sqlite < 20 ms (from 1 s)"]["met"] is False
    assert checks["idle dispatch-to-start p50 on mysql < 20 ms (from 1 s)"]["met"] is True
    assert checks["dispatch with wake-up on >= 90% of off, 16 dispatchers, pgsql"]["met"] is False   # 0.45x
    assert checks["dispatch with wake-up on >= 90% of off, 16 dispatchers, sqlite"]["met"] is True   # 0.95x
    assert checks["dispatch with wake-up on >= 90% of off, 16 dispatchers, mysql"]["met"] is False   # 0.88x
    redis = checks["Redis processing >= 2x the fastest peer, AsyncMQ among them"]
    assert redis["met"] is False and "asyncmq" in redis["detail"]                                   # 10,000 / 6,000
    text = report.render(data)
    assert "## Targets (issue 14, part 3)" in text and "| pgsql | off | 400 | 400 |" in text


def test_a_deep_case_is_judged_against_the_baseline_drained_in_turn_with_it() -> None:
    """(g): a deep queue's rounds each drained beside a 1,000-waiting queue in the same Redis; the median
    of the rounds' ratios judges it, not the first case's rate from minutes earlier. A result without
    that baseline (an older run) is still judged by the first case."""
    def row(case: str, rate: float, **extra: Any) -> dict[str, Any]:
        return {"case": case, "priorities": "0", "ready": 61_000, "delayed": 0, "build_s": 1.0, "rate": rate,
                "rates": [rate] * 3, **extra}

    depth = {"name": "ours depth (redis)", "jobs": 20_000, "depth": 1_000_000, "db_depth": 0, "database": [],
             "errors": [], "rows": [
                 row("1,000 waiting", 10_000.0, base_rate=10_100.0, pair_ratio=0.99),
                 row("1,000,000 waiting", 7_000.0, base_rate=7_400.0, pair_ratio=0.95),
                 row("1,000,000 delayed", 8_000.0, base_rate=10_000.0, pair_ratio=0.8),
                 row("1,000,000 delayed", 9_500.0, priorities="0..9")]}
    # the mixed-priority row has no 1,000-waiting row of its own: it is the first of its priorities
    data = build([target("ours (redis)", 10_000), depth])
    checks = {t["target"]: t for t in data["targets"] if t["target"].startswith("(g)")}

    waiting = checks["(g) throughput with 1,000,000 waiting within 10% of 1,000 waiting drained in turn with it"]
    assert waiting["met"] is True and "0.95x" in waiting["detail"]            # 0.70x of the first case's rate
    delayed = checks["(g) throughput with 1,000,000 delayed within 10% of 1,000 waiting drained in turn with it"]
    assert delayed["met"] is False and "0.80x" in delayed["detail"]
    assert len(checks) == 2
    older = dict(depth, rows=[row("1,000 waiting", 10_000.0), row("1,000,000 waiting", 8_500.0)])
    [old] = [t for t in build([target("ours (redis)", 10_000), older])["targets"] if t["target"].startswith("(g)")]
    assert old["target"] == "(g) throughput with 1,000,000 waiting within 10% of that with 1,000 waiting"
    assert old["met"] is False and "0.85x" in old["detail"]
    assert "| 0.95x |" in report.render(data)


def test_without_asyncmq_or_a_wake_up_switch_nothing_is_called_met() -> None:
    no_switch = {"name": "ours wake-up", "switch": None, "dispatchers": 16, "dispatch_jobs": 100, "idle_probes": 10,
                 "idle": [{"connection": "sqlite", "mode": "as built", "samples": [500.0] * 10}],
                 "dispatch": [{"connection": "sqlite", "mode": "as built", "rates": [900.0], "rate": 900.0}],
                 "errors": []}
    data = build([target("ours (redis)", 10_000), target("taskiq (list)", 3_000), no_switch,
                  {"name": "asyncmq", "missing": "could not install: no wheel"}])
    checks = targets_14(data)

    assert checks["Redis processing >= 2x the fastest peer, AsyncMQ among them"]["met"] is None
    assert checks["idle dispatch-to-start p50 on sqlite < 20 ms (from 1 s)"]["met"] is False
    assert "no wake-up switch" in checks["idle dispatch-to-start p50 on sqlite < 20 ms (from 1 s)"]["detail"]
    sqlite = checks["dispatch with wake-up on >= 90% of off, 16 dispatchers, sqlite"]
    assert sqlite["met"] is None and "no wake-up switch in this build" in sqlite["detail"]
    assert "- asyncmq: not run: could not install: no wheel" in report.render(data)


def test_a_target_that_cannot_run_here_is_reported_as_not_run_with_its_reason(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "unrunnable_target.py").write_text(textwrap.dedent("""
        from bench.harness import NotRunnable

        def make_target(*args):
            raise NotRunnable("this build has no such connection")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    monkeypatch.setattr(harness.signal, "signal", lambda *args: None)      # pytest keeps its SIGTERM handler

    harness.main(["unrunnable_target", "x"])

    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "missing": "this build has no such connection"}
