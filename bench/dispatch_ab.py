"""A/B of concurrent dispatch: bench/dispatch_concurrent.py run from two checkouts, interleaved in
ABBA rounds so the machine's swings fall on both alike.

    BENCH_REDIS_PORT=6401 .venv/bin/python bench/dispatch_ab.py /path/to/before-checkout 1 10 100

BENCH_AB_ROUNDS (default 4, even) rounds; each round runs every concurrency in a fresh process per
checkout. Prints per concurrency the median jobs/s and CPU us/job of A (the given checkout, "before")
and B (this one, "after"), and B/A.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS") or 4)


def run(root: Path, concurrency: list[str]) -> dict[int, tuple[float, float]]:
    out = subprocess.run([str(HERE / ".venv/bin/python"), str(HERE / "bench/dispatch_concurrent.py"), *concurrency],
                         env=dict(os.environ, BENCH_DISPATCH_ROOT=str(root)), capture_output=True, text=True,
                         check=True).stdout
    return {int(c): (float(rate), float(cpu)) for _, c, rate, cpu in (line.split() for line in out.splitlines()
                                                                          if line.startswith("C "))}


def main() -> None:
    before, concurrency = Path(sys.argv[1]), sys.argv[2:] or ["1", "10", "100"]
    results: dict[str, list[dict[int, tuple[float, float]]]] = {"A": [], "B": []}
    for n in range(ROUNDS):
        order = ("A", "B") if n % 2 == 0 else ("B", "A")
        for side in order:
            results[side].append(run(before if side == "A" else HERE, concurrency))
    for c in map(int, concurrency):
        a_rate = statistics.median(r[c][0] for r in results["A"])
        b_rate = statistics.median(r[c][0] for r in results["B"])
        a_cpu = statistics.median(r[c][1] for r in results["A"])
        b_cpu = statistics.median(r[c][1] for r in results["B"])
        print(f"concurrency {c}: A {a_rate:,.0f} jobs/s {a_cpu:.0f} us CPU/job; B {b_rate:,.0f} jobs/s "
              f"{b_cpu:.0f} us CPU/job; B/A rate {b_rate / a_rate:.2f}x, CPU/job {b_cpu / a_cpu:.2f}x "
              f"(rounds A {[round(r[c][0]) for r in results['A']]}, B {[round(r[c][0]) for r in results['B']]})",
              flush=True)


if __name__ == "__main__":
    main()
