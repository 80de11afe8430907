"""Issue 6's targets (item 3) and issue 14's (part 3), checked against one run: met or not, with the
numbers behind it."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]


def _by_name(data: Row) -> dict[str, Row]:
    return {s["name"]: s for s in data["summary"]}


def _raw(data: Row, name: str) -> Row:
    return next((r for r in data["results"] if r["name"] == name and not r.get("missing")), {})


def _store(name: str) -> str:
    suffix = name.rpartition("(")[2].rstrip(")")
    return suffix if suffix in ("sqlite", "mysql", "pgsql") else "redis"


def _peers(data: Row, store: str = "redis") -> list[Row]:
    """The peers on one store (ours on Redis is compared with the Redis peers)."""
    return [s for s in data["summary"] if not s["name"].startswith("ours") and _store(s["name"]) == store]


def _best(rows: Sequence[Row], key: str, higher: bool = True) -> tuple[str, float] | None:
    values = [(r["name"], r[key]) for r in rows if r.get(key)]
    return (max if higher else min)(values, key=lambda v: v[1]) if values else None


def _target(name: str, met: bool | None, detail: str) -> Row:
    return {"target": name, "met": met, "detail": detail}


def _fmt(v: float | None, unit: str = "jobs/s") -> str:
    if v is None:
        return "-"
    return f"{v:,.0f} {unit}" if unit == "jobs/s" or v >= 10 else f"{v:.2f} {unit}"


def _ratio_check(name: str, ours: tuple[str, float] | None, peer: tuple[str, float] | None, factor: float,
                 unit: str = "jobs/s") -> Row:
    if not ours or not peer:
        return _target(name, None, "not measured (a side is missing)")
    r = ours[1] / peer[1]
    return _target(name, r >= factor, f"{ours[0]} {_fmt(ours[1], unit)} vs {peer[0]} {_fmt(peer[1], unit)}: {r:.2f}x "
                                      f"(needs {factor:g}x)")


def _routemq_db(data: Row) -> tuple[str, float] | None:
    r = _raw(data, "routemq (mysql)")
    runs = [t for t in (r.get("throughput") or []) + (r.get("extra") or []) if t.get("rate")]
    best = max(runs, key=lambda t: t["rate"], default=None)
    return (f"RouteMQ MySQL `{best['label']}`", best["rate"]) if best else None


def _ours_mysql_4(data: Row) -> tuple[str, float] | None:
    extra = [t for t in _raw(data, "ours (mysql)").get("extra") or [] if t.get("copies") == 4 and t.get("rate")]
    return ("ours MySQL 4 processes", extra[0]["rate"]) if extra else None


def _ours_sqlite_1(data: Row) -> tuple[str, float] | None:
    s = _by_name(data).get("ours (sqlite)")
    return (f"ours SQLite 1 process `{s['best_label']}`", s["best"]) if s and s.get("best") else None


def check(data: Row, depth: Row | None) -> list[Row]:
    ours = _by_name(data).get("ours (redis)", {"name": "ours (redis)"})
    peers = _peers(data)
    ref = data["reference"].get("rate")
    out = [_ratio_check("(c) Redis processing >= 2x the fastest peer at its best setting",
                        ("ours", ours["best"]) if ours.get("best") else None, _best(peers, "best"), 2)]
    out.append(_ratio_check("(a) sequential enqueue >= the fastest peer's",
                            ("ours", ours["enqueue"]) if ours.get("enqueue") else None, _best(peers, "enqueue"), 1))
    out.append(_ratio_check("(a) sequential enqueue >= 75% of one connection's round trips (PING loop)",
                            ("ours", ours["enqueue"]) if ours.get("enqueue") else None,
                            ("PING", ref) if ref else None, 0.75))
    out.append(_ratio_check("(b) bulk enqueue >= 5x the fastest peer's bulk API",
                            ("ours dispatch_many", ours["bulk"]) if ours.get("bulk") else None,
                            _best(peers, "bulk"), 5))
    for p in ("p50", "p99"):
        mine, best = ours.get(p), _best(peers, p, higher=False)
        out.append(_target(f"(d) idle latency {p} no worse than the best peer's",
                           None if not mine or not best else mine <= best[1],
                           f"ours {_fmt(mine, 'ms')} vs {best[0]} {_fmt(best[1], 'ms')}" if mine and best
                           else "not measured"))
    routemq = _routemq_db(data)
    out.append(_ratio_check("(f) MySQL with 4 worker processes >= 10x RouteMQ's database driver",
                            _ours_mysql_4(data), routemq, 10))
    out.append(_ratio_check("(f) SQLite with 1 worker process >= 10x RouteMQ's database driver",
                            _ours_sqlite_1(data), routemq, 10))
    out += _depth_checks(depth)
    rss = [(s["name"], s["rss_mb"]) for s in data["summary"] if s["name"].startswith("ours") and s.get("rss_mb")]
    worst = max(rss, key=lambda v: v[1], default=None)
    out.append(_target("(e) worker RSS <= 50 MB", None if not worst else worst[1] <= 50,
                       f"largest: {worst[0]} {worst[1]:.0f} MB (VmHWM, over its c=1/10/100 runs)" if worst
                       else "not measured"))
    return out


def _depth_checks(depth: Row | None) -> list[Row]:
    """Each deep case within 10% of 1,000 waiting at the same priorities (priority 0, and the mixed
    priorities 0..9 of issue 13). Judged by the baseline drained in turn with the deep queue, round by
    round, in the same Redis (bench.depth's pair_ratio); a result without one (an older run) by the
    first case's rate."""
    rows = (depth or {}).get("rows") or []
    out = []
    for row in rows:
        mix = row.get("priorities", "0")
        first = next(r for r in rows if r.get("priorities", "0") == mix)
        if row is first:
            continue
        label = "" if mix == "0" else f", priorities {mix},"
        if row.get("pair_ratio") and row.get("base_rate"):
            name = f"(g) throughput with {row['case']}{label} within 10% of 1,000 waiting drained in turn with it"
            r = row["pair_ratio"]
            out.append(_target(name, r >= 0.9, f"{row['rate']:,.0f} vs {row['base_rate']:,.0f} jobs/s (medians); "
                                               f"median of the rounds' ratios {r:.2f}x (needs 0.90x)"))
            continue
        name = f"(g) throughput with {row['case']}{label} within 10% of that with {first.get('case')}"
        if not row.get("rate") or not first.get("rate"):
            out.append(_target(name, None, "not measured"))
            continue
        r = row["rate"] / first["rate"]
        out.append(_target(name, r >= 0.9,
                           f"{row['rate']:,.0f} vs {first['rate']:,.0f} jobs/s: {r:.2f}x (needs 0.90x)"))
    if not rows:
        out.append(_target("(g) throughput with 1,000,000 waiting or delayed within 10% of 1,000", None, "not run"))
    return out


# -- issue 14, part 3 ------------------------------------------------------------------------------

IDLE_P50_MS = {"pgsql": 10.0, "sqlite": 20.0, "mysql": 20.0}


def check_issue_14(data: Row, wake: Row | None) -> list[Row]:
    summary = _by_name(data)
    pgsql = summary.get("ours (pgsql)")
    ours_pg = (f"ours PostgreSQL `{pgsql['best_label']}`", pgsql["best"]) if pgsql and pgsql.get("best") else None
    out = [_ratio_check("PostgreSQL processing >= 2x the faster of Chancy and procrastinate", ours_pg,
                        _best(_peers(data, "pgsql"), "best"), 2),
           _ratio_check("PostgreSQL processing >= 10x RouteMQ's database driver", ours_pg, _routemq_db(data), 10)]
    out += _idle_checks(wake)
    out += _dispatch_checks(wake)
    redis_peers = _peers(data)
    ours = summary.get("ours (redis)", {})
    check = _ratio_check("Redis processing >= 2x the fastest peer, AsyncMQ among them",
                         ("ours", ours["best"]) if ours.get("best") else None, _best(redis_peers, "best"), 2)
    if "asyncmq" not in summary:
        check = _target(check["target"], None, "AsyncMQ did not run: " + check["detail"])
    out.append(check)
    return out


def _wake_rows(wake: Row | None, key: str) -> list[Row]:
    """The rows of one scenario of bench/wake.py, with wake-up on (or the build as it is, without a switch)."""
    return [r for r in (wake or {}).get(key) or [] if r["mode"] in ("on", "as built")]


def _idle_checks(wake: Row | None) -> list[Row]:
    from bench.report import percentile

    rows = {r["connection"]: r for r in _wake_rows(wake, "idle")}
    out = []
    for connection, limit in IDLE_P50_MS.items():
        name = f"idle dispatch-to-start p50 on {connection} < {limit:g} ms (from 1 s)"
        row = rows.get(connection) or {}
        p50 = percentile(row.get("samples") or [], 50)
        if p50 is None:
            out.append(_target(name, None, row.get("note") or "not measured"))
            continue
        mode = "wake-up on" if row["mode"] == "on" else "this build, no wake-up switch"
        p99 = percentile(row["samples"], 99)
        out.append(_target(name, p50 < limit, f"p50 {_fmt(p50, 'ms')}, p99 {_fmt(p99, 'ms')} "
                                              f"over {len(row['samples'])} probes ({mode})"))
    return out


def _dispatch_checks(wake: Row | None) -> list[Row]:
    rows = (wake or {}).get("dispatch") or []
    out = []
    for connection in ("pgsql", "sqlite", "mysql"):
        dispatchers = (wake or {}).get("dispatchers", 16)
        name = f"dispatch with wake-up on >= 90% of off, {dispatchers} dispatchers, {connection}"
        modes = {r["mode"]: r for r in rows if r["connection"] == connection}
        on, off = modes.get("on", {}).get("rate"), modes.get("off", {}).get("rate")
        if on and off:
            out.append(_target(name, on / off >= 0.9,
                               f"on {_fmt(on)} vs off {_fmt(off)}: {on / off:.2f}x (needs 0.90x)"))
        else:
            note = next((r.get("note") for r in modes.values() if r.get("note")), None)
            built = modes.get("as built", {}).get("rate")
            out.append(_target(name, None, note or ("no wake-up switch in this build; as built " + _fmt(built)
                                                    if built else "not measured")))
    return out


def render(rows: Sequence[Row]) -> str:
    mark = {True: "met", False: "NOT MET", None: "not measured"}
    return "\n".join(f"- **{mark[r['met']]}**: {r['target']}: {r['detail']}" for r in rows)


# -- issue 12: the build before it, in the same run -------------------------------------------------

BEFORE_12 = "ours before issue 12 (redis)"


def check_issue_12(data: Row) -> list[Row]:
    """With no middleware and no listener, processing at c=1, 10 and 100 and dispatch within 3% of the
    build before issue 12 (bench/baseline.py), and c=1 at least 1.5x the best peer's own c=1."""
    summary = _by_name(data)
    ours, before = summary.get("ours (redis)", {}), summary.get(BEFORE_12)
    out = []
    for key, what in (("c1", "processing, concurrency 1"), ("c10", "processing, concurrency 10"),
                      ("c100", "processing, concurrency 100"), ("enqueue", "dispatch (sequential)")):
        name = f"{what} within 3% of the build before issue 12"
        if not before:
            reason = next((r["reason"] for r in data.get("not_run") or [] if r["name"] == BEFORE_12), "not run")
            out.append(_target(name, None, reason))
            continue
        out.append(_ratio_check(name, ("ours", ours[key]) if ours.get(key) else None,
                                ("before", before[key]) if before.get(key) else None, 0.97))
    out.append(_ratio_check("Redis processing at concurrency 1 >= 1.5x the best peer at its own concurrency 1",
                            ("ours", ours["c1"]) if ours.get("c1") else None, _best(_peers(data), "c1"), 1.5))
    return out
