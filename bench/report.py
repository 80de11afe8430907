"""Turns the targets' results (harness.Result as dicts, bench.depth's dict) into the report of
`make bench`: a summary per target and scenario, the fastest peer per scenario and our ratio to
it, each target's settings, the database and depth tables, the reference, and the targets check.

Ratios are ours / peer on the same store: ours on Redis against the Redis peers, ours on each
database against the peers on it (RouteMQ's database driver runs on MySQL; Chancy and procrastinate
on PostgreSQL; dbjobq on SQLite). For rates (jobs/s) above 1 means we are faster; for latency and
memory below 1 means we are better.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from bench import targets

Row = dict[str, Any]
PARTIAL = "†"
COLUMNS = [  # key, header, higher is better
    ("enqueue", "(a) enqueue seq/s", True), ("bulk", "(b) bulk/s", True),
    ("c1", "(c) c=1 jobs/s", True), ("c10", "(c) c=10 jobs/s", True), ("c100", "(c) c=100 jobs/s", True),
    ("best", "(c) best jobs/s", True), ("p50", "(d) p50 ms", False), ("p99", "(d) p99 ms", False),
    ("rss_mb", "(e) peak RSS MB", False),
]


def percentile(samples: Sequence[float], p: int) -> float | None:
    if not samples:
        return None
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 10 else f"{value:,.0f}")


def ratio(ours: float | None, peer: float | None) -> str:
    if not ours or not peer:
        return "-"
    r = ours / peer
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x"


DATABASES = ("sqlite", "mysql", "pgsql")
SCENARIOS = ("ours depth (redis)", "ours wake-up")     # results with tables of their own


def is_ours(row: Row) -> bool:
    return row["name"].startswith("ours")


def store(name: str) -> str:
    """The store a target runs on: the database in its name's parentheses, else Redis."""
    suffix = name.rpartition("(")[2].rstrip(")")
    return suffix if suffix in DATABASES else "redis"


# -- summary ---------------------------------------------------------------------------------------

def summarize(row: Row) -> Row:
    """One target's figure per scenario column, with partial flags and the settings behind them."""
    runs = [t for t in row.get("throughput") or [] if t.get("rate")]
    by_c = {t["concurrency"]: t for t in runs}
    best = max(runs, key=lambda t: t["rate"], default=None)
    lat = row.get("latency_ms") or []
    out: Row = {
        "name": row["name"], "version": row.get("version", ""),
        "enqueue": row.get("enqueue"),
        "enqueue_partial": bool(row.get("enqueue") and row.get("enqueue_jobs", 0) < row.get("jobs", 0)),
        "bulk": row.get("bulk"), "bulk_partial": bool(row.get("bulk") and row.get("bulk_jobs", 0) < row.get("jobs", 0)),
        "best": best and best["rate"], "best_label": best and best["label"],
        "best_partial": bool(best and best.get("partial")),
        "p50": percentile(lat, 50), "p99": percentile(lat, 99), "latency_n": len(lat),
        "idle_p50": percentile(row.get("long_idle_ms") or [], 50),
        "rss_mb": max((t.get("rss_mb") or 0 for t in runs), default=0) or None,
        "rss_total_mb": max((t.get("rss_total_mb") or 0 for t in runs), default=0) or None,
        "rss_processes": max((t.get("processes") or 0 for t in runs), default=0),
    }
    for c in (1, 10, 100):
        t = by_c.get(c)
        out[f"c{c}"] = t and t["rate"]
        out[f"c{c}_partial"] = bool(t and t.get("partial"))
    return out


def fastest(peers: Sequence[Row]) -> dict[str, tuple[str, float] | None]:
    """Per column, the best peer and its value (highest rate, lowest latency or memory)."""
    best: dict[str, tuple[str, float] | None] = {}
    for key, _, higher in COLUMNS:
        values = [(p["name"], p[key]) for p in peers if p.get(key)]
        best[key] = (max if higher else min)(values, key=lambda v: v[1]) if values else None
    return best


def build(results: Sequence[Row], reference: Row, info: Row, n: int) -> Row:
    depth = next((r for r in results if r["name"] == "ours depth (redis)"), None)
    wake = next((r for r in results if r["name"] == "ours wake-up" and not r.get("missing")), None)
    rows = [r for r in results if r["name"] not in SCENARIOS]
    ran = [r for r in rows if not r.get("missing")]
    summary = [summarize(r) for r in ran]
    peers = [s for s in summary if not is_ours(s)]
    data: Row = {"machine": info, "n": n, "reference": reference, "results": list(results),
                 "summary": summary, "fastest_peer": fastest([p for p in peers if store(p["name"]) == "redis"]),
                 "fastest_database_peer": {db: fastest([p for p in peers if store(p["name"]) == db])
                                           for db in DATABASES},
                 "not_run": [{"name": r["name"], "reason": r["missing"]} for r in results if r.get("missing")]}
    data["targets"] = targets.check(data, depth)
    data["targets_14"] = targets.check_issue_14(data, wake)
    data["targets_12"] = targets.check_issue_12(data)
    return data


# -- rendering -------------------------------------------------------------------------------------

def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _cell(s: Row, key: str) -> str:
    value = s.get(key)
    if key in ("p50", "p99"):
        return ms(value)
    if key == "rss_mb":
        if not value:
            return "-"
        total = s.get("rss_total_mb")
        return f"{value:.0f}" + (f" ({s['rss_processes']} procs: {total:.0f})" if s.get("rss_processes", 1) > 1 else "")
    return rate(value) + (PARTIAL if s.get(f"{key}_partial") else "")


def main_table(data: Row) -> str:
    """Ours on Redis against the Redis peers."""
    return _store_table(data, ("redis",), {"redis": data["fastest_peer"]})


def database_peers_table(data: Row) -> str:
    """Ours on SQLite, MySQL and PostgreSQL against the peers on the same database."""
    return _store_table(data, DATABASES, data["fastest_database_peer"])


def _store_table(data: Row, stores: Sequence[str], best_by_store: dict[str, Row]) -> str:
    lines = []
    for db in stores:
        rows = [s for s in data["summary"] if store(s["name"]) == db]
        ours = next((s for s in rows if is_ours(s)), None)
        missing = [r for r in data["not_run"] if store(r["name"]) == db and r["name"] not in SCENARIOS]
        if not rows and not missing:
            continue
        for s in rows:
            name = f"**{s['name']}**" if s is ours else s["name"]
            lines.append([name] + [_cell(s, key) for key, _, _ in COLUMNS])
        for r in missing:
            lines.append([r["name"], "not run"] + [""] * (len(COLUMNS) - 1))
        best = best_by_store.get(db) or {}
        if not any(best.values()):
            continue
        lines.append([f"best peer ({db})"] + [f"{_cell({key: b[1], 'rss_processes': 1}, key)} {b[0]}" if b else "-"
                                              for (key, _, _), b in ((c, best.get(c[0])) for c in COLUMNS)])
        label = ours["name"] if ours else f"ours ({db})"
        lines.append([f"**{label} / best peer**"] + [
            f"**{ratio((ours or {}).get(key), best[key][1] if best.get(key) else None)}**" for key, _, _ in COLUMNS])
    return table(["target"] + [h for _, h, _ in COLUMNS], lines)


def settings_table(data: Row) -> str:
    lines = []
    for r in data["results"]:
        if r.get("missing") or "throughput" not in r:
            continue
        workers = "; ".join(f"c={t['concurrency']}: `{t['label']}`"
                            + (f" ({t['jobs']:,} of {t['of']:,} jobs in the budget)" if t.get("partial") else "")
                            for t in r["throughput"])
        lines.append([r["name"], r.get("version", ""), f"`{r.get('enqueue_label', '')}`",
                      f"`{r['bulk_label']}`" if r.get("bulk_label") else "none", workers,
                      f"`{r.get('latency_label', '')}` (n={len(r.get('latency_ms') or [])})"])
    return table(["target", "version", "(a) call", "(b) bulk call", "(c) worker per concurrency", "(d) worker"], lines)


def database_table(data: Row) -> str:
    rows = {r["name"]: r for r in data["results"] if not r.get("missing")}
    lines = []
    for name in ("ours (sqlite)", "ours (mysql)", "ours (pgsql)", "ours (redis)", "routemq (mysql)", "routemq (redis)"):
        r = rows.get(name)
        if not r:
            continue
        single = [t for t in r.get("throughput") or [] if t.get("concurrency") in (1, 10)]
        for t in single[-1:] + list(r.get("extra") or []):
            procs = t.get("copies", 1) if "processes 2" not in t["label"] else 2
            lines.append([name, f"`{t['label']}`", str(procs), f"{t.get('jobs', 0):,}" if t.get("rate") else "-",
                          (rate(t.get("rate")) + (PARTIAL if t.get("partial") else "")) if t.get("rate") else
                          t.get("note", "failed (see errors)")])
    return table(["connection", "worker(s)", "processes", "jobs", "jobs/s"], lines)


def _same_case(rows: list[Row], row: Row, **match: Any) -> Any:
    """The rate of the row like `row` but for the fields given (a depth table's ratio base)."""
    want = {k: row.get(k) for k in ("store", "case", "priorities")} | match
    found = next((r for r in rows if all(r.get(k, "0" if k == "priorities" else None) == v
                                         for k, v in want.items())), None)
    return found.get("rate") if found else None


def depth_table(depth: Row | None) -> str:
    if not depth:
        return "not run"
    if depth.get("missing"):
        return f"not run: {depth['missing']}"
    rows = depth.get("rows") or []
    first = rows[0]["case"] if rows else ""
    lines = [[r["case"], r.get("priorities", "0"), f"{r.get('ready', 0):,}", f"{r.get('delayed', 0):,}",
              f"{r.get('build_s', '-')}", rate(r.get("rate")) + (PARTIAL if r.get("partial") else ""),
              ", ".join(rate(x) for x in r.get("rates") or []) or "-",
              ratio(r.get("rate"), _same_case(rows, r, case=first)),
              ratio(r.get("rate"), _same_case(rows, r, priorities="0")),
              f"{r['pair_ratio']:.2f}x" if r.get("pair_ratio") else "-",
              f"{r['server_us']:.1f}" if r.get("server_us") else "-",
              f"{r['worker_us']:.0f}" if r.get("worker_us") else "-"] for r in rows]
    return (f"N = {depth.get('jobs', 0):,} jobs a round, processed by `queue:work --concurrency 10`; three rounds "
            "from one build, the median reported. Priorities `0..9`: every queued job at a random priority "
            "(seeded); the ratios are to the 1,000-waiting case of the same priorities and to the same case "
            "at priority 0. \"1,000 waiting beside it\": each round also drains N jobs of a queue with only 1,000 "
            "behind them, same priorities, in the same Redis, in turn with the case; the median of the rounds' "
            "ratios (what (g) is judged by). Redis CPU µs/job: the redis-server's CPU time (user + system) over a "
            "drain per job, the median round; worker CPU µs/job: the worker process's (its start-up included).\n\n"
            + table(["case", "priorities", "ready at start", "delayed (+1 h)", "build s", "jobs/s (median)", "rounds",
                     "vs 1,000 waiting", "vs priority 0", "vs 1,000 waiting beside it", "Redis CPU µs/job",
                     "worker CPU µs/job"], lines))


def database_depth_table(depth: Row | None) -> str:
    rows = (depth or {}).get("database") or []
    if not rows:
        return "not run"
    first = next((r["case"] for r in rows if r.get("delayed") == 0), "")
    lines = [[r["store"], r["case"], r.get("priorities", "0"), f"{r.get('ready', 0):,}", rate(r.get("rate")),
              ratio(r.get("rate"), _same_case(rows, r, case=first)),
              ratio(r.get("rate"), _same_case(rows, r, priorities="0"))]
             for r in rows]
    return ("N due jobs reserved 10 at a time and acknowledged, straight on the store, behind no delayed jobs "
            "and behind many (delayed an hour): a flat reserve costs the same. Priorities `0..9`: due and delayed "
            "jobs at a random priority (seeded).\n\n"
            + table(["store", "case", "priorities", "due jobs", "jobs/s", "vs none delayed", "vs priority 0"], lines))


def wake_tables(wake: Row | None) -> str:
    """(h) idle latency per store and mode, (i) dispatch throughput with wake-up on and off."""
    if not wake:
        return "not run"
    if wake.get("missing"):
        return f"not run: {wake['missing']}"
    switch = wake.get("switch")
    mode_note = (f"\"off\": the worker and the dispatchers run with `{switch}`; \"on\": as shipped." if switch else
                 "This build has no wake-up switch (its databases have no wake-up): \"as built\" is the build "
                 "as it is.")
    idle = [[r["connection"], r["mode"], f"`{r.get('worker', '')}`" if r.get("worker") else "-",
             str(len(r.get("samples") or [])), ms(percentile(r.get("samples") or [], 50)),
             ms(percentile(r.get("samples") or [], 99)), ms(max(r.get("samples") or [0]) or None),
             r.get("note", "")] for r in wake.get("idle") or []]
    off = {r["connection"]: r for r in wake.get("dispatch") or [] if r["mode"] == "off"}
    dispatch = [[r["connection"], r["mode"], ", ".join(rate(x) for x in r.get("rates") or []) or "-",
                 rate(r.get("rate")),
                 ratio(r.get("rate"), off.get(r["connection"], {}).get("rate")) if r["mode"] == "on" else "",
                 rate(r.get("run_rate")),
                 ratio(r.get("run_rate"), off.get(r["connection"], {}).get("run_rate")) if r["mode"] == "on" else "",
                 ", ".join(f"{x:.2f}" for x in r.get("worker_cpu") or []) or "-", r.get("note", "")]
                for r in wake.get("dispatch") or []]
    return "\n\n".join([
        f"### (h) Idle dispatch-to-start latency\n\nOne idle `queue:work` (defaults: --sleep 1); one process "
        f"dispatches a probe job every 100-200 ms, {wake.get('idle_probes')} times, without waiting for them. "
        + mode_note + "\n\n"
        + table(["connection", "wake-up", "worker", "n", "p50 ms", "p99 ms", "max ms", "note"], idle),
        f"### (i) Dispatch throughput, wake-up on and off\n\n{wake.get('dispatchers')} dispatcher processes, each "
        f"pushing {wake.get('dispatch_jobs')} jobs one `await NoopJob.dispatch()` after another, started together, "
        "with one idle worker running; rounds on, off, off, on (a fresh store each), the median per mode. "
        "\"run\": until the worker has also run every job (both modes then do the same work; bench/wake.py). "
        "\"worker CPU s\": the worker's CPU time inside each round's dispatch window.\n\n"
        + table(["connection", "wake-up", "rounds jobs/s", "jobs/s (median)", "on / off", "run jobs/s", "run on / off",
                 "worker CPU s", "note"], dispatch),
    ])


def render(data: Row) -> str:
    m, ref = data["machine"], data["reference"]
    depth = next((r for r in data["results"] if r["name"] == "ours depth (redis)"), None)
    wake = next((r for r in data["results"] if r["name"] == "ours wake-up"), None)
    errors = [f"- {r['name']}: {e}" for r in data["results"] for e in (r.get("errors") or [])]
    errors += [f"- {r['name']}: not run: {r['reason']}" for r in data["not_run"]]
    machine = (f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; {m['os']}; Python {m['python']} "
               f"(RouteMQ's venv: {m.get('python_routemq') or '-'}); Redis {m['redis']}, MariaDB {m['mariadb']}, "
               f"PostgreSQL {m.get('postgresql', '-')}, all on 127.0.0.1. N = {data['n']:,}. Load average "
               f"{m['load_start'][0]} at the start, {m.get('load_end', ['?'])[0]} at the "
               f"end; the run took {m.get('seconds', '?')} s.")
    return "\n\n".join([
        "# Benchmark: this framework vs its peers, one run",
        machine,
        "## Per scenario, Redis\n\n" + main_table(data) + "\n\n"
        f"{PARTIAL} over the jobs run within the time budget, not all N (see the settings). Best peer: the fastest in "
        "that column, or for (d) and (e) the lowest. Ratios: ours on Redis / the best Redis peer; for (d) and (e) "
        "below 1 is better. (e) is the largest worker process's VmHWM over its (c) runs, with the sum over the "
        "worker's processes where it has several.",
        "## Per scenario, the databases\n\n" + database_peers_table(data) + "\n\n"
        "Each database's peers: dbjobq on SQLite, RouteMQ's database driver on MySQL, Chancy and procrastinate on "
        "PostgreSQL (each in a database of its own, made anew for every fill); ratios: ours on that database / its "
        "best peer. (d) here is with 5-10 ms between probes; a worker that polls every `--sleep` (1 s) gets few "
        "samples. Scenario (h) below measures the idle latency of every store the same way.",
        "## Settings\n\n" + settings_table(data),
        "## (f) Database connections and worker processes\n\n" + database_table(data),
        "## (g) Depth, ours on Redis\n\n" + depth_table(depth),
        "## (g) Depth, ours on SQLite and MySQL: reserve behind delayed jobs\n\n" + database_depth_table(depth),
        "## (h), (i) Wake-up: idle latency and dispatch throughput\n\n" + wake_tables(wake),
        f"## Reference\n\nOne connection, one process, redis-py {ref.get('redis_py')} asyncio `PING` one after "
        f"another: {rate(ref.get('rate'))} round trips/s (median of {len(ref.get('rates') or [])} rounds of "
        f"{ref.get('pings', 0):,}).",
        "## Targets (issue 6, item 3)\n\n" + targets.render(data["targets"]),
        "## Targets (issue 14, part 3)\n\n" + targets.render(data.get("targets_14") or []),
        "## Targets (issue 12: no middleware, no listener)\n\n" + targets.render(data.get("targets_12") or []),
        "## Errors and targets not run\n\n" + ("\n".join(errors) if errors else "none"),
    ]) + "\n"
