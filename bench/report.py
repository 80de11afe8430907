"""Turns the targets' results (harness.Result as dicts) into the Markdown tables of `make bench`.

Ratios are ours / peer. For rates (jobs/s) above 1 means we are faster; for latency (ms) below 1
means we start jobs sooner. Our side of every peer ratio is ours on Redis, the peers' store.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]


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
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.3f}x (1/{1 / r:.0f})"


def throughput(row: Row, index: int = 0) -> float | None:
    runs = row.get("throughput") or []
    return runs[index][1] if len(runs) > index else None


def latency(row: Row, p: int, key: str = "latency_ms") -> float | None:
    return percentile(row.get(key) or [], p)


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def ours_table(rows: Sequence[Row]) -> str:
    lines = []
    for r in rows:
        runs = {label: value for label, value in r.get("throughput") or []}
        lines.append([r["name"], f"{r['jobs']:,}", rate(r.get("enqueue")), rate(r.get("bulk")),
                      rate(runs.get("--concurrency 1")), rate(runs.get("--concurrency 10")),
                      f"{ms(latency(r, 50))} / {ms(latency(r, 99))} (n={len(r.get('latency_ms') or [])})",
                      f"{ms(latency(r, 50, 'long_idle_ms'))} / {ms(max(r.get('long_idle_ms') or [0]) or None)}"])
    return table(["connection", "jobs", "enqueue seq/s", "dispatch_many/s", "worker c=1 jobs/s",
                  "worker c=10 jobs/s", "idle latency p50 / p99 ms", "after 1-2 s idle p50 / max ms"], lines)


def peers_table(ours: Row | None, peers: Sequence[Row]) -> str:
    ours = ours or {}
    o_seq, o_bulk = ours.get("enqueue"), ours.get("bulk")
    o_c1, o_c10 = throughput(ours, 0), throughput(ours, 1)
    o_p50, o_p99 = latency(ours, 50), latency(ours, 99)
    o_idle = latency(ours, 50, "long_idle_ms")
    lines = []
    for r in peers:
        if r.get("missing"):
            lines.append([r["name"], "not run: " + r["missing"]] + [""] * 8)
            continue
        t = throughput(r)
        label = (r.get("throughput") or [["-"]])[0][0]
        lines.append([
            f"{r['name']} ({r.get('version', '').split()[-1]})",
            f"{rate(r.get('enqueue'))} ({ratio(o_seq, r.get('enqueue'))})",
            f"{rate(r.get('bulk'))} ({ratio(o_bulk, r.get('bulk'))})" if r.get("bulk") else "-",
            f"{rate(t)} [{label}]",
            ratio(o_c1, t), ratio(o_c10, t),
            f"{ms(latency(r, 50))} / {ms(latency(r, 99))}",
            f"{ratio(o_p50, latency(r, 50))} / {ratio(o_p99, latency(r, 99))}",
            f"{ms(latency(r, 50, 'long_idle_ms'))} ({ratio(o_idle, latency(r, 50, 'long_idle_ms'))})",
            "; ".join(r.get("errors") or []) or "",
        ])
    header = ["peer", "enqueue seq/s (ours/peer)", "bulk/s (ours/peer)", "worker jobs/s [settings]",
              "ours c=1 / peer", "ours c=10 / peer", "idle p50 / p99 ms", "ours/peer p50 / p99",
              "after 1-2 s idle p50 ms (ours/peer)", "errors"]
    ours_line = ["**ours (redis)**", rate(o_seq), rate(o_bulk), f"{rate(o_c1)} [c=1], {rate(o_c10)} [c=10]",
                 "", "", f"{ms(o_p50)} / {ms(o_p99)}", "", ms(o_idle), "; ".join(ours.get("errors") or [])]
    return table(header, [ours_line] + lines)


def errors(rows: Sequence[Row]) -> str:
    found = [f"- {r['name']}: {e}" for r in rows for e in (r.get("errors") or [])]
    return "\n".join(found) if found else "none"


def render(ours: Sequence[Row], peers: Sequence[Row], machine: str, method: str) -> str:
    redis = next((r for r in ours if r["name"] == "ours (redis)"), None)
    return "\n\n".join([
        "# Benchmark: this framework vs its peers",
        machine,
        "## Ours, per connection\n\n" + ours_table(ours),
        "## Ours (Redis) vs the peers (Redis), same machine, same run\n\n"
        "Ratios are ours / peer: above 1 is better for jobs/s, below 1 is better for latency.\n\n"
        + peers_table(redis, peers),
        "## Errors\n\n" + errors(list(ours) + list(peers)),
        "## How it was measured\n\n" + method,
    ]) + "\n"
