"""Judging a chaos run: from what each job recorded, what the store holds and when workers were
killed, decide whether anything was lost, stuck, or run twice without a kill to explain it.

Pure functions over plain records, so tests/chaos/test_analysis.py can show each rule catches
what it is meant to catch without killing anything.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

EPS = 0.05                        # seconds of slack between clocks read in different processes
PLANNED = "tests.jobs.chaos_jobs.PlannedFailure"
EXHAUSTED = "core.worker.MaxAttemptsExceededError"


@dataclass(frozen=True)
class PlannedJob:
    kind: str                     # quick | long | flaky | doomed
    max_tries: int
    fail_until: int               # attempts below this fail on purpose
    seconds: float
    dispatched_at: float


@dataclass
class Run:
    attempt: int
    pid: int
    start: float
    end: float | None = None      # None: the run never finished (its worker died)
    outcome: str | None = None    # ok | fail (planned) | error (timeout, cancelled)


@dataclass(frozen=True)
class Kill:
    pid: int
    sent: float                   # just before SIGKILL was sent
    dead: float                   # once the process was reaped


@dataclass
class Verdict:
    outcome: str = ""             # succeeded | failed-planned | failed-after-kills | lost | wrong
    cut: int = 0                  # runs cut by a kill, then run again
    unacked: int = 0              # runs that finished but whose worker was killed before acknowledging
    vanished: int = 0             # attempts reserved by a worker killed before the job started
    reruns: int = 0               # starts after a run that did not fail, each explained by a kill
    unexplained: int = 0          # starts after a run that did not fail, with no kill to explain them
    problems: list[str] = field(default_factory=list)


@dataclass
class ChaosReport:
    store: str
    jobs: int = 0
    workers: int = 0
    kills: int = 0
    elapsed: float = 0.0
    visibility_timeout: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0           # jobs whose handle() started again after a run that did not fail
    unexplained: int = 0          # ... of which no kill explains the repeat
    cut: int = 0
    unacked: int = 0
    vanished: int = 0
    left: int = 0                 # pending + delayed + reserved at the end (queue:size)
    long_jobs: int = 0
    long_once: int = 0            # long jobs that ran once, past the visibility timeout, and succeeded
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.outcomes.get("lost", 0)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        o = self.outcomes
        return (f"chaos {self.store:<6} {self.jobs} jobs, {self.workers} workers, {self.kills} kills, "
                f"{self.elapsed:.0f}s | {o.get('succeeded', 0)} succeeded, {o.get('failed-planned', 0)} failed as "
                f"planned, {o.get('failed-after-kills', 0)} failed after kills used their tries | "
                f"{self.duplicates} duplicates, {self.duplicates - self.unexplained} explained by a kill "
                f"({self.cut} cut, {self.unacked} finished unacked; {self.vanished} attempts lost with a killed "
                f"worker) | lost {self.lost}, stuck {self.left} | {self.long_once}/{self.long_jobs} long jobs ran "
                f"once past the {self.visibility_timeout}s visibility timeout -> {'OK' if self.ok else 'FAILED'}")


def read_runs(path: Path) -> dict[str, list[Run]]:
    """The runs each job recorded, in start order. An `end` line closes the open run of its attempt and pid."""
    runs: dict[str, list[Run]] = defaultdict(list)
    open_runs: dict[tuple[str, int, int], Run] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        parts = line.split()
        if len(parts) < 5:
            continue
        event, job_id, attempt, pid, at = parts[0], parts[1], int(parts[2]), int(parts[3]), float(parts[4])
        if event == "start":
            run = Run(attempt, pid, at)
            runs[job_id].append(run)
            open_runs[(job_id, attempt, pid)] = run
        elif event == "end" and (run := open_runs.pop((job_id, attempt, pid), None)) is not None:
            run.end, run.outcome = at, parts[5] if len(parts) > 5 else "?"
    for job_runs in runs.values():
        job_runs.sort(key=lambda r: (r.start, r.attempt))
    return dict(runs)


class KillLog:
    def __init__(self, kills: list[Kill]) -> None:
        self.by_pid = {k.pid: k for k in kills}
        self.times = sorted(k.sent for k in kills)

    def of(self, pid: int) -> Kill | None:
        return self.by_pid.get(pid)

    def between(self, t0: float, t1: float) -> int:
        return bisect.bisect_right(self.times, t1 + EPS) - bisect.bisect_left(self.times, t0 - EPS)


def judge(job_id: str, plan: PlannedJob, runs: list[Run], failure: str | None, kills: KillLog,
          visibility_timeout: float) -> Verdict:
    """One job's history against the rules: a run is repeated only after a kill, nothing is dropped."""
    v = Verdict()
    short = job_id[:8]

    def killed_during(run: Run) -> Kill | None:
        k = kills.of(run.pid)
        return k if k is not None and run.start <= k.dead + EPS else None

    def vanished(count: int, t0: float, t1: float, killed_pid_counts: bool) -> None:
        # Each attempt no run recorded was reserved by a worker that died before starting it; the
        # job came back only when that reservation expired, a visibility timeout later.
        available = kills.between(t0, t1) - (1 if killed_pid_counts else 0)
        if count > available:
            v.problems.append(f"{short}: {count} attempt(s) used without a run and without a kill to explain it "
                              f"({t0:.2f}..{t1:.2f})")
        elif t1 - t0 < count * visibility_timeout - EPS:
            v.problems.append(f"{short}: {count} attempt(s) used without a run within {t1 - t0:.2f}s, sooner than "
                              f"their reservations could expire")
        v.vanished += max(0, count)

    for run in runs:
        if run.outcome == "error":
            v.problems.append(f"{short}: attempt {run.attempt} ended in a timeout or cancellation (pid {run.pid})")
    first_attempt = runs[0].attempt if runs else plan.max_tries + 1
    if first_attempt > 1:
        vanished(first_attempt - 1, plan.dispatched_at, runs[0].start if runs else float("inf"), False)
    for a, b in zip(runs, runs[1:]):
        if b.attempt <= a.attempt:
            v.problems.append(f"{short}: attempt {b.attempt} ran in pid {b.pid} after attempt {a.attempt} in "
                              f"pid {a.pid}: one reservation held twice")
            v.unexplained += 1
            continue
        if a.outcome in ("fail", "error"):
            if b.start < a.end - EPS:
                v.problems.append(f"{short}: attempt {b.attempt} started before attempt {a.attempt} ended")
            if b.attempt - a.attempt > 1:
                vanished(b.attempt - a.attempt - 1, a.end, b.start, False)
            continue
        k = killed_during(a)
        if k is None or k.sent > b.start + EPS:
            state = "finished" if a.end is not None else "was still running"
            why = "was not killed" if kills.of(a.pid) is None else "was killed only later"
            v.problems.append(f"{short}: ran again (attempt {b.attempt}, pid {b.pid}, at {b.start:.2f}) while "
                              f"attempt {a.attempt} {state} in pid {a.pid}, which {why}")
            v.unexplained += 1
            continue
        v.reruns += 1
        if a.end is None:
            v.cut += 1
        else:
            v.unacked += 1
        if b.attempt - a.attempt > 1:
            vanished(b.attempt - a.attempt - 1, k.sent, b.start, True)
    last = runs[-1] if runs else None
    if last is not None and last.end is None and killed_during(last) is None:
        v.problems.append(f"{short}: attempt {last.attempt} never finished, and its worker {last.pid} was not killed")
    v.outcome = _final_outcome(v, short, plan, last, failure, kills, killed_during, vanished)
    return v


def _final_outcome(v: Verdict, short: str, plan: PlannedJob, last: Run | None, failure: str | None,
                   kills: KillLog, killed_during, vanished) -> str:
    if failure is None:
        if last is not None and last.outcome == "ok":
            return "succeeded"
        v.problems.append(f"{short}: lost: neither succeeded nor in failed_jobs (last run: {last})")
        return "lost"
    if failure.startswith(PLANNED):
        if last is None or last.outcome != "fail" or last.attempt < plan.max_tries:
            v.problems.append(f"{short}: in failed_jobs with a planned failure before its tries were used "
                              f"(last run {last}, max_tries {plan.max_tries})")
            return "wrong"
        return "failed-planned"
    if failure.startswith(EXHAUSTED):
        # Its last tries went to workers that died: the last run's own, and any attempt with no run.
        if last is None:
            vanished(plan.max_tries, plan.dispatched_at, float("inf"), False)
        elif last.outcome in ("fail", "error"):
            vanished(plan.max_tries - last.attempt, last.end, float("inf"), False)
        else:
            k = killed_during(last)
            if k is None:
                v.problems.append(f"{short}: failed as out of tries, but its last run's worker {last.pid} was not "
                                  f"killed")
                return "wrong"
            if plan.max_tries > last.attempt:
                vanished(plan.max_tries - last.attempt, k.sent, float("inf"), True)
            v.cut += last.end is None
            v.unacked += last.end is not None
        return "failed-after-kills"
    v.problems.append(f"{short}: in failed_jobs with an unexpected exception: {failure}")
    return "wrong"


def analyze(store: str, planned: dict[str, PlannedJob], runs: dict[str, list[Run]], failures: dict[str, str],
            kills: list[Kill], left: int, visibility_timeout: int) -> ChaosReport:
    """Judge every dispatched job; `failures` maps failed_jobs ids to the first line of their exception."""
    log = KillLog(kills)
    report = ChaosReport(store, jobs=len(planned), kills=len(kills), left=left, visibility_timeout=visibility_timeout)
    outcomes: dict[str, int] = defaultdict(int)
    for job_id, plan in planned.items():
        job_runs = runs.get(job_id, [])
        v = judge(job_id, plan, job_runs, failures.get(job_id), log, visibility_timeout)
        outcomes[v.outcome] += 1
        if plan.kind == "doomed" and v.outcome == "succeeded":
            v.problems.append(f"{job_id[:8]}: planned to fail every attempt, yet succeeded")
        report.cut += v.cut
        report.unacked += v.unacked
        report.vanished += v.vanished
        report.duplicates += 1 if v.reruns + v.unexplained else 0
        report.unexplained += 1 if v.unexplained else 0
        report.problems += v.problems
        if plan.kind == "long":
            report.long_jobs += 1
            if len(job_runs) == 1 and job_runs[0].outcome == "ok" and \
                    job_runs[0].end - job_runs[0].start > visibility_timeout:
                report.long_once += 1
    report.outcomes = dict(outcomes)
    strangers = (set(failures) | set(runs)) - set(planned)
    if strangers:
        report.problems.append(f"{len(strangers)} job id(s) ran or failed that were never dispatched")
    if left:
        report.problems.append(f"stuck: queue:size still shows {left} job(s) pending, delayed or reserved")
    return report
