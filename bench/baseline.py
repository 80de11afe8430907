"""The build before issue 12 (SPEC 9 and 10), measured in the same `make bench` run as ours.

Issue 12 asks that, with no middleware and no listener, processing at concurrency 1, 10 and 100 and
dispatch stay within 3% of the code before it, both measured in one run. `prepare()` extracts that
commit's tree (`git archive`, no worktree) into bench/.baseline/<commit>/ once; run.py then runs
its own bench.ours from there, with the project's venv, against the same servers. One line of its
harness is changed: it reads BENCH_REDIS_PORT as ours does, so both measure the same Redis.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
COMMIT = "63d446a"         # main before issue 12's first commit
HARNESS_PORT = 'REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379\n'
HARNESS_PORT_ENV = 'REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("BENCH_REDIS_PORT") or 6379)\n'


def prepare(commit: str = COMMIT) -> Path | str:
    """The extracted tree of `commit`, or why it cannot be had (a shallow clone, no git)."""
    target = BENCH / ".baseline" / commit
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        detail = getattr(exc, "stderr", b"") or b""
        return f"commit {commit} not extracted ({detail.decode(errors='replace').strip()[:200] or exc})"
    harness = target / "bench" / "harness.py"
    text = harness.read_text()
    if HARNESS_PORT in text:
        harness.write_text(text.replace(HARNESS_PORT, HARNESS_PORT_ENV))
    (target / ".complete").touch()
    return target
