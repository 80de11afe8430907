"""`make bench`: every target in its own process, with a time limit, then one report.

Ours runs on Redis, SQLite and MySQL with the project's venv (and bench.depth, scenario g); each
peer with the venv the Makefile built for it (bench/.venv/<venv>). A target that is not installed,
fails or overruns its time limit is reported as such and the run goes on. Redis: ours uses db 11,
the peers db 12, each flushed before and after (here too, after a target that had to be stopped).
The reference row (one connection's PING round trips) is measured here, in the same run.
The report goes to stdout, bench/results/latest.md and bench/results/latest.json; each target's
stderr (tracebacks, progress) to bench/results/logs/<target>.log.

BENCH_N sets N (default 20,000); BENCH_DEPTH the depth of scenario g (1,000,000); BENCH_ONLY a
comma-separated list of name fragments ("ours,taskiq") to run only those targets.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench import harness, pg, report  # noqa: E402

RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Run:
    name: str
    venv: str | None        # None: the project's venv
    args: tuple[str, ...]   # python -m ARGS
    timeout: float
    redis_db: int
    baseline: bool = False   # run from the build before issue 12 (bench/baseline.py), not from this tree

    @property
    def python(self) -> Path:
        return Path(sys.executable) if self.venv is None else BENCH / ".venv" / self.venv / "bin" / "python"


def _peer(name: str, venv: str, *args: str, timeout: float = 170) -> Run:
    return Run(name, venv, ("bench.harness", f"bench.peers.{venv}", *args), timeout, harness.PEER_DB)


RUNS = [
    Run("ours (redis)", None, ("bench.harness", "bench.ours", "redis"), 170, harness.OUR_DB),
    Run("ours before issue 12 (redis)", None, ("bench.harness", "bench.ours", "redis"), 170, harness.OUR_DB,
        baseline=True),
    Run("ours (sqlite)", None, ("bench.harness", "bench.ours", "sqlite"), 150, harness.OUR_DB),
    Run("ours (mysql)", None, ("bench.harness", "bench.ours", "mysql"), 150, harness.OUR_DB),
    Run("ours (pgsql)", None, ("bench.harness", "bench.ours", "pgsql"), 150, harness.OUR_DB),
    Run("ours depth (redis)", None, ("bench.depth",), 1200, harness.OUR_DB),
    _peer("arq", "arq"), _peer("saq", "saq"), _peer("rq", "rq"), _peer("dramatiq", "dramatiq"),
    _peer("celery", "celery"), _peer("taskiq (list)", "taskiq", "list"), _peer("taskiq (stream)", "taskiq", "stream"),
    _peer("routemq (redis)", "routemq", "redis"), _peer("routemq (mysql)", "routemq", "mysql", timeout=200),
    _peer("asyncmq", "asyncmq"), _peer("dbjobq (sqlite)", "dbjobq"),
    _peer("chancy (pgsql)", "chancy"), _peer("procrastinate (pgsql)", "procrastinate"),
    Run("ours wake-up", None, ("bench.wake",), 600, harness.OUR_DB),
]


def run_target(run: Run) -> dict:
    if not (run.python.exists() and (run.venv is None or (BENCH / ".venv" / run.venv / ".installed").exists())):
        return {"name": run.name, "missing": _install_failure(run.venv)}
    started = time.monotonic()
    print(f"  {run.name} ...", file=sys.stderr, flush=True)
    log_path = RESULTS / "logs" / f"{run.name.replace(' ', '').replace('(', '-').rstrip(')')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        result = _run_logged(run, log, log_path)
    result["wall_s"] = round(time.monotonic() - started, 1)
    if run.baseline and not result.get("missing"):     # its own git lookup finds this checkout's commit
        from bench import baseline

        result["version"] = baseline.COMMIT
    print(f"  {run.name}: {result.get('missing') or 'done'} in {result['wall_s']:.0f}s", file=sys.stderr, flush=True)
    return result


def _install_failure(venv: str | None) -> str:
    log = BENCH / ".venv" / f"{venv}.log"
    if not log.exists():
        return f"not installed: run `make bench` (it builds bench/.venv/{venv})"
    lines = [ln for ln in log.read_text(errors="replace").strip().splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if "ERROR" in ln or "error" in ln or "No Python" in ln),
                  lines[-1] if lines else "no output")
    return f"could not install: {reason.strip()[:300]} (bench/.venv/{venv}.log)"


def _run_logged(run: Run, log: Any, log_path: Path) -> dict:
    tree = ROOT
    if run.baseline:
        from bench import baseline

        got = baseline.prepare()
        if isinstance(got, str):
            return {"name": run.name, "missing": got}
        tree = got
    proc = subprocess.Popen([str(run.python), "-m", *run.args], cwd=tree,
                            env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.PIPE,
                            stderr=log, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=run.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)          # the harness stops its workers on SIGTERM
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        _flush(run.redis_db)
        return {"name": run.name, "missing": f"timed out after {run.timeout:.0f}s"}
    lines = out.strip().splitlines()
    try:
        return {**json.loads(lines[-1]), "name": run.name}
    except (IndexError, ValueError):
        log.flush()
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        return {"name": run.name, "missing": f"exited {proc.returncode}: {tail}"}


def _flush(db: int) -> None:
    import redis

    redis.Redis.from_url(harness.redis_url(db)).flushdb(asynchronous=True)


def ping_rate(rounds: int = 3, pings: int = 10_000) -> dict[str, Any]:
    """The reference: redis-py asyncio PING, one awaited call after another, on one connection in
    one process (this one); median of `rounds` rounds."""
    import asyncio
    import statistics

    import redis
    import redis.asyncio

    async def one_round() -> float:
        client = redis.asyncio.Redis(host=harness.REDIS_HOST, port=harness.REDIS_PORT, db=harness.OUR_DB,
                                     single_connection_client=True)
        try:
            await client.ping()
            started = time.perf_counter()
            for _ in range(pings):
                await client.ping()
            return pings / (time.perf_counter() - started)
        finally:
            await client.aclose()

    rates = [asyncio.run(one_round()) for _ in range(rounds)]
    return {"rate": statistics.median(rates), "rates": rates, "pings": pings, "redis_py": redis.__version__}


def machine() -> dict[str, Any]:
    import pymysql
    import redis

    info = redis.Redis.from_url(harness.redis_url(harness.OUR_DB)).info("server")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
    try:
        conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="")
        with conn.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            mariadb = cursor.fetchone()[0]
        conn.close()
    except pymysql.MySQLError as exc:
        mariadb = f"unavailable ({exc})"
    cfg = BENCH / ".venv" / "routemq" / "pyvenv.cfg"
    routemq_python = next((ln.split("=", 1)[1].strip() for ln in cfg.read_text().splitlines()
                           if ln.startswith("version")), None) if cfg.exists() else None
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu, "cores": os.cpu_count(),
            "python_routemq": routemq_python,
            "memory_gb": round(mem_kb / 2**20, 1), "os": platform.platform(), "python": platform.python_version(),
            "redis": info.get("redis_version"), "mariadb": mariadb, "postgresql": pg.server_version(),
            "load_start": [round(x, 2) for x in os.getloadavg()]}


def selected(runs: list[Run]) -> list[Run]:
    only = [w.strip() for w in (os.environ.get("BENCH_ONLY") or "").split(",") if w.strip()]
    return [r for r in runs if not only or any(w in r.name for w in only)]


def run_all(runs: list[Run]) -> list[dict]:
    """Every target once, but ours on Redis and the build before issue 12 (when both are selected)
    twice each, in the order ours, before, before, ours (ABBA: a drift of the machine over the run
    weighs on both alike), each pair's figures averaged (merge)."""
    pair = [r for r in runs if r.name == "ours (redis)" or r.baseline]
    if len(pair) != 2:
        return [run_target(r) for r in runs]
    results: list[dict] = []
    for run in runs:
        if run is pair[0]:
            rounds = {r.name: [] for r in pair}      # type: dict[str, list[dict]]
            for r in (*pair, *reversed(pair)):
                rounds[r.name].append(run_target(r))
            results += [merge(rounds[r.name]) for r in pair]
        elif run is not pair[1]:
            results.append(run_target(run))
    return results


def merge(rounds: list[dict]) -> dict:
    """One target's rounds as one result: rates averaged per scenario, latency samples pooled. A round
    that did not run leaves the other alone; none ran: the first round's reason."""
    ran = [r for r in rounds if not r.get("missing")]
    if len(ran) < 2:
        return ran[0] if ran else rounds[0]
    out = dict(ran[0])
    for key in ("enqueue", "bulk"):
        values = [r[key] for r in ran if r.get(key)]
        out[key] = sum(values) / len(values) if values else None
    by_label: dict[str, list[float]] = {}
    for r in ran:
        for t in r.get("throughput") or []:
            if t.get("rate"):
                by_label.setdefault(t["label"], []).append(t["rate"])
    out["throughput"] = [{**t, "rate": sum(by_label[t["label"]]) / len(by_label[t["label"]]),
                          "rounds": by_label[t["label"]]} if t.get("label") in by_label else t
                         for t in ran[0].get("throughput") or []]
    for key in ("latency_ms", "long_idle_ms"):
        out[key] = [v for r in ran for v in r.get(key) or []]
    out["rounds"] = len(ran)
    return out


def main() -> None:
    started = time.monotonic()
    runs = selected(RUNS)
    print(f"bench: N={harness.N:,}; reference, then {', '.join(r.name for r in runs)}", file=sys.stderr, flush=True)
    info = machine()
    reference = ping_rate()
    results = run_all(runs)
    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    info["seconds"] = round(time.monotonic() - started)
    data = report.build(results, reference, info, harness.N)
    text = report.render(data)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"bench: done in {info['seconds']}s; bench/results/latest.md and latest.json written", file=sys.stderr)


if __name__ == "__main__":
    main()
