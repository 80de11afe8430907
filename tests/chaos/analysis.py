"""Judging a chaos run: from what each job recorded, what the store holds, when workers were killed
and what queue:retry and queue:clear did, decide whether anything was lost, stuck, run twice
without a kill or a retry to explain it, failed twice, or left a stale failed row.

Pure functions over plain records, so tests/chaos/test_analysis.py can show each rule catches
what it is meant to catch without killing anything.

A job's history is split into generations at each queue:retry that put it back: each generation
starts at attempt 1 and is judged on its own; every generation but the last must have ended failed
(queue:retry found its failed_jobs row). A job that is neither succeeded, failed nor queued is
"missing": only queue:clear may account for that, so the missing jobs must add up to the counts
queue:clear reported (a clear may also have taken a job that had finished and come back because its
worker was killed before acknowledging it; nothing else).
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

EPS = 0.05                        # seconds of slack between clocks read in different processes
PLANNED = "tests.jobs.chaos_jobs.PlannedFailure"
EXHAUSTED = "core.worker.MaxAttemptsExceededError"
RETRIED = "(taken back by queue:retry)"    # a generation that queue:retry found in failed_jobs
# A worker whose job's tries are over marks it failing (one round trip to the queue store), then
# runs failed(), then marks that; one killed in between leaves the next worker to record it out of
# tries, or to call failed() again. Only a kill this soon after (times the visibility timeout, to
# cover a store cut in between) explains that; a later one found the failure already marked.
# A database store is cut for up to 0.35 visibility timeouts (driver.cut_stores) after its answers
# were lost for up to 0.2 s; the settle's retries back off 0.2, 0.4, 0.8, 1.6 s, so with the 4 s
# timeout the first one after the cut may come 3.0 s (0.75 timeouts) after the failure: seen under
# load on PostgreSQL, where 0.5 called a worker killed while still retrying its mark a wrong exception.
FAILING_WINDOW = 0.8


@dataclass(frozen=True)
class PlannedJob:
    kind: str                     # quick | long | flaky | doomed | blocker
    max_tries: int
    fail_until: int               # attempts below this fail on purpose (until failed() has run once)
    seconds: float
    dispatched_at: float
    block: float = 0.0            # seconds each run blocks its worker's event loop
    proxied: bool = False         # dispatched through the proxy that drops answers
    keeps: bool = False           # keeps its result (SPEC 11): judged by results.py


@dataclass
class Run:
    attempt: int
    pid: int
    start: float
    end: float | None = None      # None: the run never finished (its worker died)
    outcome: str | None = None    # ok | fail (planned) | error (timeout, cancelled)


@dataclass(frozen=True)
class FailedCall:
    """One call of the job's failed(), as the job recorded it."""
    attempt: int
    pid: int
    at: float
    exception: str


@dataclass(frozen=True)
class Kill:
    pid: int
    sent: float                   # just before SIGKILL was sent
    dead: float                   # once the process was reaped


@dataclass(frozen=True)
class Retry:
    """One queue:retry call: when it began, the jobs it put back, and the first line of the failed
    row it took back for each (as queue:failed showed it; absent: not known)."""
    at: float
    uuids: frozenset[str]
    rows: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Clear:
    """One queue:clear call: when it began, and the count it reported."""
    at: float
    count: int


@dataclass
class Verdict:
    outcome: str = ""             # succeeded | failed-planned | failed-after-kills | missing | retried | stale | wrong
    cut: int = 0                  # runs cut by a kill, then run again
    unacked: int = 0              # runs that finished but whose worker was killed before acknowledging
    vanished: int = 0             # attempts reserved by a worker killed before the job started
    reruns: int = 0               # starts after a run that did not fail, each explained by a kill
    unexplained: int = 0          # starts after a run that did not fail, with no kill to explain them
    retry_runs: int = 0           # generations after a queue:retry that ran
    generations: int = 1
    failed_calls: int = 0
    extra_calls: int = 0          # failed() calls beyond one per failure, without a kill to explain them
    stale: int = 0                # failed rows for a job whose last run succeeded
    requeue_candidate: bool = False   # finished, its worker killed before acknowledging: may be back on the queue
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
    dup_kill: int = 0             # ... explained by a kill
    dup_retry: int = 0            # jobs run again after queue:retry took them back from failed_jobs
    unexplained: int = 0          # jobs run again with neither a kill nor a retry to explain it
    cut: int = 0
    unacked: int = 0
    vanished: int = 0
    missing: int = 0              # neither succeeded, failed nor queued
    cleared: int = 0              # the sum of the counts queue:clear reported
    retried: int = 0              # jobs queue:retry put back
    stale_rows: int = 0
    failed_calls: int = 0
    extra_failed_calls: int = 0
    doomed_failed: int = 0        # jobs planned to fail every attempt whose failed() ran (before any retry or clear)
    left: int = 0                 # pending + delayed + reserved at the end (queue:size)
    long_jobs: int = 0
    long_once: int = 0            # long jobs that ran once, past the visibility timeout, and succeeded
    long_past: int = 0            # long jobs with a run past the visibility timeout that succeeded (renewed all along)
    faults: dict[str, int] = field(default_factory=dict)   # what the driver did besides killing
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return max(0, self.missing - self.cleared)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        o = self.outcomes
        faults = ", ".join(f"{v} {k}" for k, v in self.faults.items()) or "kills only"
        return (f"chaos {self.store:<6} {self.jobs} jobs, {self.workers} workers, {self.kills} kills, "
                f"{self.elapsed:.0f}s | {faults} | {o.get('succeeded', 0)} succeeded, "
                f"{o.get('failed-planned', 0)} failed as planned, {o.get('failed-after-kills', 0)} failed after kills "
                f"used their tries | duplicated {self.duplicates}: {self.dup_kill} after a kill ({self.cut} cut, "
                f"{self.unacked} finished unacked; {self.vanished} attempts lost with a killed worker), "
                f"{self.dup_retry} after queue:retry, {self.unexplained} unexplained | lost {self.lost} "
                f"(missing {self.missing}, queue:clear removed {self.cleared}), stale failed rows {self.stale_rows}, "
                f"failed() calls {self.failed_calls} ({self.extra_failed_calls} extra), stuck {self.left} | "
                f"{self.long_past}/{self.long_jobs} long jobs succeeded in a run past the {self.visibility_timeout}s "
                f"visibility timeout ({self.long_once} in their only run) -> {'OK' if self.ok else 'FAILED'}")


def read_runs(path: Path) -> dict[str, list[Run]]:
    """The runs each job recorded, in start order. An `end` line closes the open run of its attempt and pid."""
    runs: dict[str, list[Run]] = defaultdict(list)
    open_runs: dict[tuple[str, int, int], Run] = {}
    for parts in _lines(path):
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


def read_failed_calls(path: Path) -> dict[str, list[FailedCall]]:
    """The failed() calls each job recorded, in time order."""
    calls: dict[str, list[FailedCall]] = defaultdict(list)
    for parts in _lines(path):
        if parts[0] == "failed":
            calls[parts[1]].append(FailedCall(int(parts[2]), int(parts[3]), float(parts[4]),
                                              parts[5] if len(parts) > 5 else "?"))
    for job_calls in calls.values():
        job_calls.sort(key=lambda c: c.at)
    return dict(calls)


def _lines(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [parts for parts in (line.split() for line in text.splitlines()) if len(parts) >= 5]


class KillLog:
    def __init__(self, kills: list[Kill]) -> None:
        self.by_pid = {k.pid: k for k in kills}
        self.times = sorted(k.sent for k in kills)

    def of(self, pid: int) -> Kill | None:
        return self.by_pid.get(pid)

    def between(self, t0: float, t1: float) -> int:
        return bisect.bisect_right(self.times, t1 + EPS) - bisect.bisect_left(self.times, t0 - EPS)

    def killed_after(self, pid: int, at: float, within: float = float("inf")) -> bool:
        """Whether this worker was killed at or after `at`, by `within` seconds (before it could
        finish what it did then)."""
        k = self.of(pid)
        return k is not None and at - EPS <= k.sent <= at + within + EPS


def judge(job_id: str, plan: PlannedJob, runs: list[Run], failure: str | None, kills: KillLog,
          visibility_timeout: float, calls: list[FailedCall] | tuple = (), row: str | None = None) -> Verdict:
    """One generation of a job's history against the rules: a run is repeated only after a kill,
    nothing is dropped, failed() runs once per failure. `failure` is the first line of its
    failed_jobs row, RETRIED for a generation queue:retry took back (`row`: the first line of the
    row it took, when known), None when it has no row."""
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
    if runs and runs[0].attempt > 1:
        vanished(runs[0].attempt - 1, plan.dispatched_at, runs[0].start, False)
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
    v.outcome = _final_outcome(v, short, plan, last, failure, kills, killed_during, vanished, visibility_timeout,
                               row)
    v.requeue_candidate = (v.outcome == "succeeded" and last is not None and last.end is not None
                           and kills.killed_after(last.pid, last.end))
    _judge_failed_calls(v, short, runs, list(calls), failure, kills, FAILING_WINDOW * visibility_timeout)
    return v


def _final_outcome(v: Verdict, short: str, plan: PlannedJob, last: Run | None, failure: str | None,
                   kills: KillLog, killed_during, vanished, visibility_timeout: float, row: str | None = None) -> str:
    if failure is None:
        if last is not None and last.outcome == "ok":
            return "succeeded"
        return "missing"          # only queue:clear may account for it (analyze() counts)
    # The row's own words: for a generation queue:retry took back, the row it took (if known).
    exception = row if failure == RETRIED and row else failure
    if last is not None and last.outcome == "ok" and not (exception.startswith(EXHAUSTED) and killed_during(last)):
        # A row (or a retry of one) for a job whose last run succeeded, in a worker nobody killed.
        v.stale += 1
        what = "queue:retry took back a failed_jobs row" if failure == RETRIED else f"failed_jobs holds {failure!r}"
        v.problems.append(f"{short}: stale failed row: {what} although its last run (attempt {last.attempt}, pid "
                          f"{last.pid}) succeeded")
        return "stale"
    if failure == RETRIED:
        if last is None and exception.startswith(EXHAUSTED):     # every try of it went to a killed worker
            vanished(plan.max_tries, plan.dispatched_at, float("inf"), False)
        return "retried"
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
            window = FAILING_WINDOW * visibility_timeout
            if last.attempt >= plan.max_tries and not kills.killed_after(last.pid, last.end, window):
                # The last try failed in a worker that lived on long enough to mark the job failing:
                # that failure is what must be recorded.
                v.problems.append(f"{short}: failed_jobs says out of tries, but attempt {last.attempt} failed in "
                                  f"pid {last.pid}, which was not killed within {window:g}s after: the wrong exception")
                return "wrong"
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


def _judge_failed_calls(v: Verdict, short: str, runs: list[Run], calls: list[FailedCall], failure: str | None,
                        kills: KillLog, window: float) -> None:
    """failed() runs once per failure: a call before the last one is allowed only where its worker
    was killed right after it, before it could mark that failed() had run; a run after a call needs
    a queue:retry."""
    v.failed_calls = len(calls)
    if not calls:
        if failure is not None and v.outcome != "stale":
            v.problems.append(f"{short}: ended failed, but failed() never ran")
        return
    recorded = failure is not None and v.outcome != "stale"
    unexplained = [c for c in (calls[:-1] if recorded else calls) if not kills.killed_after(c.pid, c.at, window)]
    if unexplained and v.outcome != "missing":
        v.extra_calls += len(unexplained)
        first = unexplained[0]
        v.problems.append(f"{short}: failed() ran {len(calls)} time(s) for "
                          f"{'one failure' if recorded else 'no failure'}"
                          f" (first at attempt {first.attempt} in pid {first.pid}, which was not killed within "
                          f"{window:g}s after it)")
    after = [r for r in runs if r.start > calls[0].at + EPS]
    if after:
        v.problems.append(f"{short}: ran again (attempt {after[0].attempt}, pid {after[0].pid}) after failed() had "
                          f"run, without a queue:retry")
        v.unexplained += 1


def split_generations(runs: list[Run], calls: list[FailedCall], retried_at: list[float]
                      ) -> list[tuple[float | None, list[Run], list[FailedCall]]]:
    """(start, runs, failed() calls) per generation: a queue:retry of the job begins a new one."""
    bounds = sorted(retried_at)
    gens: list[tuple[float | None, list[Run], list[FailedCall]]] = [(None, [], [])]
    gens += [(t, [], []) for t in bounds]
    for run in runs:
        gens[bisect.bisect_right(bounds, run.start)][1].append(run)
    for call in calls:
        gens[bisect.bisect_right(bounds, call.at)][2].append(call)
    return gens


def judge_job(job_id: str, plan: PlannedJob, runs: list[Run], calls: list[FailedCall], failure: str | None,
              kills: KillLog, visibility_timeout: float, retried_at: list[float] | tuple = (),
              retried_rows: dict[float, str] | None = None) -> Verdict:
    """Every generation of one job; the verdict's outcome is the last generation's. `retried_rows`:
    the first line of the row each queue:retry (by its time) took back, where known."""
    total = Verdict()
    gens = split_generations(runs, calls, list(retried_at))
    ends = sorted(retried_at)       # generation i ends with the i-th queue:retry
    total.generations = len(gens)
    for i, (began, g_runs, g_calls) in enumerate(gens):
        g_plan = plan
        if began is not None:
            # Put back by queue:retry: attempts start again, and failed() has run, so every run succeeds.
            g_plan = replace(plan, fail_until=0, dispatched_at=began)
            total.retry_runs += 1 if g_runs else 0
        g_failure = failure if i == len(gens) - 1 else RETRIED
        row = (retried_rows or {}).get(ends[i]) if i < len(ends) else None
        # Out of tries with no run since the retry: kills may have used them all (SPEC 5: a killed
        # worker's reservation comes back and counts the attempt), as judge() weighs for a first generation.
        out_of_tries = ((row or "") if g_failure == RETRIED else (g_failure or "")).startswith(EXHAUSTED)
        if began is not None and not g_runs and g_failure is not None and not out_of_tries:
            v = Verdict(outcome="stale", stale=1, failed_calls=len(g_calls))
            v.problems.append(f"{job_id[:8]}: stale failed row: "
                              f"{'queue:retry found' if g_failure == RETRIED else 'left'}"
                              f" a failed_jobs row for it although it had not run since queue:retry took it back at "
                              f"{began:.2f} (the row was written again after the retry)")
        else:
            v = judge(job_id, g_plan, g_runs, g_failure, kills, visibility_timeout, g_calls, row)
        for name in ("cut", "unacked", "vanished", "reruns", "unexplained", "failed_calls", "extra_calls", "stale"):
            setattr(total, name, getattr(total, name) + getattr(v, name))
        total.problems += v.problems
        total.outcome, total.requeue_candidate = v.outcome, v.requeue_candidate
    return total


def analyze(store: str, planned: dict[str, PlannedJob], runs: dict[str, list[Run]], failures: dict[str, str],
            kills: list[Kill], left: int, visibility_timeout: int, calls: dict[str, list[FailedCall]] | None = None,
            retries: list[Retry] | tuple = (), clears: list[Clear] | tuple = ()) -> ChaosReport:
    """Judge every dispatched job; `failures` maps failed_jobs ids to the first line of their exception."""
    calls = calls or {}
    log = KillLog(kills)
    report = ChaosReport(store, jobs=len(planned), kills=len(kills), left=left, visibility_timeout=visibility_timeout)
    retried_at: dict[str, list[float]] = defaultdict(list)
    retried_rows: dict[str, dict[float, str]] = defaultdict(dict)
    for retry in retries:
        for uuid in retry.uuids:
            retried_at[uuid].append(retry.at)
            if uuid in retry.rows:
                retried_rows[uuid][retry.at] = retry.rows[uuid]
    outcomes: dict[str, int] = defaultdict(int)
    missing: list[str] = []
    requeue_candidates = 0
    for job_id, plan in planned.items():
        job_runs = runs.get(job_id, [])
        v = judge_job(job_id, plan, job_runs, calls.get(job_id, []), failures.get(job_id), log, visibility_timeout,
                      retried_at.get(job_id, ()), retried_rows.get(job_id))
        outcomes[v.outcome] += 1
        if v.outcome == "missing":
            last = job_runs[-1] if job_runs else None
            missing.append(f"{job_id[:8]}: missing: neither succeeded nor in failed_jobs nor queued (last run: {last})")
        if plan.kind == "doomed" and calls.get(job_id):
            report.doomed_failed += 1
        if plan.kind == "doomed" and v.outcome == "succeeded" and v.generations == 1:
            v.problems.append(f"{job_id[:8]}: planned to fail every attempt, yet succeeded without a queue:retry")
        requeue_candidates += v.requeue_candidate
        report.cut += v.cut
        report.unacked += v.unacked
        report.vanished += v.vanished
        report.duplicates += 1 if v.reruns + v.unexplained + v.retry_runs else 0
        report.dup_kill += 1 if v.reruns else 0
        report.dup_retry += 1 if v.retry_runs else 0
        report.unexplained += 1 if v.unexplained else 0
        report.stale_rows += v.stale
        report.failed_calls += v.failed_calls
        report.extra_failed_calls += v.extra_calls
        report.problems += v.problems
        if plan.kind == "long":
            report.long_jobs += 1
            past = [run for run in job_runs if run.outcome == "ok" and run.end is not None
                    and run.end - run.start > visibility_timeout]
            report.long_past += bool(past)
            report.long_once += len(job_runs) == 1 and bool(past)
    report.outcomes = dict(outcomes)
    report.missing, report.cleared = len(missing), sum(c.count for c in clears)
    report.retried = sum(len(r.uuids) for r in retries)
    if report.lost:
        report.problems.append(f"lost: {report.missing} job(s) neither succeeded nor in failed_jobs nor queued, but "
                               f"queue:clear accounts for only {report.cleared}")
        report.problems += missing
    surplus = report.cleared - report.missing
    if surplus > requeue_candidates:
        report.problems.append(f"queue:clear removed {surplus} job(s) more than are missing, but only "
                               f"{requeue_candidates} had finished with their worker killed before acknowledging: "
                               f"finished jobs were back on the queue")
    strangers = (set(failures) | set(runs) | set(calls)) - set(planned)
    if strangers:
        report.problems.append(f"{len(strangers)} job id(s) ran or failed that were never dispatched")
    if left:
        report.problems.append(f"stuck: queue:size still shows {left} job(s) pending, delayed or reserved")
    return report
