"""Worker processes for the benchmark: start them as a user would, watch their memory, stop them.

Each worker is started in its own session, so it and every process it forks can be stopped
together by its id. Peak memory is VmHWM ("high water mark" of the resident set) from
/proc/<pid>/status, sampled for the worker and all its descendants while it runs and once more
before it is stopped; VmHWM only grows, so the last sample is the peak.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class WorkerConfig:
    label: str                    # how the worker was configured, for the table
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    exits_when_empty: bool = False
    concurrency: int = 1          # jobs run at once in one worker process (the table's column)
    copies: int = 1               # separate worker processes started side by side
    cwd: str | None = None        # default: the project root


class Workers:
    """`config.copies` worker processes, each in a session of its own."""

    def __init__(self, config: WorkerConfig, env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="bench-worker-", suffix=".log", delete=False)
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env, **config.env}
        self.procs = [subprocess.Popen(config.argv, cwd=config.cwd or ROOT, env=full_env, stdout=self.log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
                      for _ in range(config.copies)]
        self.peak_kb: dict[int, int] = {}
        self.cpu_ticks: dict[int, int] = {}     # utime + stime per process, the last sample

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def died(self) -> str | None:
        """Why a worker stopped on its own with a failure, if one did."""
        for p in self.procs:
            if p.poll() not in (None, 0):
                return f"worker exited {p.returncode}: {self.tail()}"
        return None

    def tail(self, lines: int = 5) -> str:
        text = Path(self.log.name).read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def sample_memory(self) -> None:
        for proc in self.procs:
            for pid in _tree(proc.pid):
                kb = _vm_hwm(pid)
                if kb:
                    self.peak_kb[pid] = max(kb, self.peak_kb.get(pid, 0))
                ticks = _cpu_ticks(pid)
                if ticks is not None:
                    self.cpu_ticks[pid] = max(ticks, self.cpu_ticks.get(pid, 0))

    def memory(self) -> dict[str, int]:
        """Largest single process, the sum over all of them (MB of VmHWM), and how many there were."""
        values = list(self.peak_kb.values()) or [0]
        return {"rss_mb": round(max(values) / 1024, 1), "rss_total_mb": round(sum(values) / 1024, 1),
                "processes": len(self.peak_kb),
                "cpu_s": round(sum(self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK"), 2)}

    def stop(self, grace: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after `grace` s: the figures are taken by then, a clean exit adds nothing."""
        for proc in self.procs:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5)
            _signal_group(proc.pid, signal.SIGKILL)    # children a worker may have left behind
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for children in glob.glob(f"/proc/{p}/task/*/children"):
            try:
                todo += [int(c) for c in Path(children).read_text().split()]
            except OSError:
                pass
    return found


def _cpu_ticks(pid: int) -> int | None:
    """CPU time the process has used so far (utime + stime, clock ticks), from /proc/<pid>/stat;
    its start-up (imports, connecting) included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_stamps(prefix: str) -> tuple[float, float, int] | None:
    """(first job's start, last job's end, jobs) over every worker process's stamp file (probe.tick)."""
    firsts, lasts, total = [], [], 0
    for path in glob.glob(prefix + ".*"):
        if path.endswith(".tmp"):
            continue
        try:
            first, last, count = Path(path).read_text().split()
        except (OSError, ValueError):
            continue
        firsts.append(float(first))
        lasts.append(float(last))
        total += int(count)
    if not total:
        return None
    return min(firsts), max(lasts), total


def clear_stamps(prefix: str) -> None:
    for path in glob.glob(prefix + ".*"):
        Path(path).unlink(missing_ok=True)
