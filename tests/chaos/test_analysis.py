"""The chaos test's judge must catch what it is there to catch: a lost job, a stuck queue, a job run
twice by live workers, an attempt that vanished without a kill. Synthetic histories, no processes."""
from __future__ import annotations

from tests.chaos.analysis import EXHAUSTED, PLANNED, Kill, KillLog, PlannedJob, Run, analyze, judge, read_runs

VT = 2
QUICK = PlannedJob("quick", max_tries=3, fail_until=0, seconds=0.1, dispatched_at=100.0)
DOOMED = PlannedJob("doomed", max_tries=3, fail_until=4, seconds=0.1, dispatched_at=100.0)


def verdict(plan, runs, failure=None, kills=()):
    return judge("job-0001", plan, runs, failure, KillLog(list(kills)), VT)


def test_one_successful_run_is_clean():
    v = verdict(QUICK, [Run(1, 11, 101.0, 101.1, "ok")])
    assert (v.outcome, v.problems, v.reruns) == ("succeeded", [], 0)


def test_a_job_neither_succeeded_nor_failed_is_lost():
    assert verdict(QUICK, []).outcome == "lost"
    v = verdict(QUICK, [Run(1, 11, 101.0, 101.1, "fail")])
    assert v.outcome == "lost" and "lost" in v.problems[0]


def test_a_second_run_after_a_success_needs_the_first_worker_killed_in_between():
    runs = [Run(1, 11, 101.0, 101.1, "ok"), Run(2, 12, 104.0, 104.1, "ok")]
    assert "ran again" in verdict(QUICK, runs).problems[0]                      # nobody was killed
    assert "killed only later" in verdict(QUICK, runs, kills=[Kill(11, 105.0, 105.1)]).problems[0]
    v = verdict(QUICK, runs, kills=[Kill(11, 101.2, 101.3)])                   # killed before acknowledging
    assert (v.problems, v.unacked, v.reruns) == ([], 1, 1)


def test_a_long_job_taken_over_while_its_live_worker_still_runs_it_is_caught():
    runs = [Run(1, 11, 101.0, 105.0, "ok"), Run(2, 12, 103.5, 107.5, "ok")]   # the heartbeat did not hold it
    v = verdict(QUICK, runs)
    assert v.unexplained == 1 and "ran again" in v.problems[0]


def test_a_run_cut_by_a_kill_may_run_again():
    runs = [Run(1, 11, 101.0), Run(2, 12, 104.0, 104.1, "ok")]
    v = verdict(QUICK, runs, kills=[Kill(11, 102.0, 102.1)])
    assert (v.outcome, v.problems, v.cut) == ("succeeded", [], 1)
    assert "never finished" in verdict(QUICK, runs[:1], kills=[]).problems[0]


def test_the_same_attempt_in_two_workers_is_caught_even_after_a_kill():
    runs = [Run(1, 11, 101.0), Run(1, 12, 104.0, 104.1, "ok")]
    assert "held twice" in verdict(QUICK, runs, kills=[Kill(11, 102.0, 102.1)]).problems[0]


def test_an_attempt_without_a_run_needs_a_kill_and_a_visibility_timeout():
    runs = [Run(1, 11, 101.0, 101.1, "fail"), Run(3, 12, 104.0, 104.1, "ok")]
    assert "without a kill" in verdict(QUICK, runs).problems[0]
    assert "sooner than" in verdict(QUICK, [runs[0], Run(3, 12, 102.0, 102.1, "ok")],
                                    kills=[Kill(13, 101.5, 101.6)]).problems[0]
    v = verdict(QUICK, runs, kills=[Kill(13, 101.5, 101.6)])
    assert (v.problems, v.vanished) == ([], 1)


def test_planned_failures_end_in_failed_jobs_only_after_every_try():
    fails = [Run(n, 11, 100.0 + n, 100.1 + n, "fail") for n in (1, 2, 3)]
    assert verdict(DOOMED, fails, failure=f"{PLANNED}: planned failure on attempt 3").outcome == "failed-planned"
    early = verdict(DOOMED, fails[:2], failure=f"{PLANNED}: planned failure on attempt 2")
    assert early.outcome == "wrong"
    assert verdict(QUICK, [Run(1, 11, 101.0, 101.1, "ok")], failure="RuntimeError: x").outcome == "wrong"


def test_out_of_tries_is_accepted_only_when_a_kill_took_the_last_try():
    runs = [Run(1, 11, 101.0, 101.1, "fail"), Run(2, 11, 101.2, 101.3, "fail"), Run(3, 12, 102.0)]
    failure = f"{EXHAUSTED}: ... a worker died"
    assert verdict(DOOMED, runs, failure, kills=[Kill(12, 102.5, 102.6)]).outcome == "failed-after-kills"
    assert verdict(DOOMED, runs, failure).outcome == "wrong"


def test_the_report_flags_a_stuck_queue_and_strangers(tmp_path):
    log = tmp_path / "runs.log"
    log.write_text("start a 1 11 101.0\nend a 1 11 101.1 ok\nstart b 1 11 101.0\nend b 1 11 101.1 ok\n")
    runs = read_runs(log)
    assert runs["a"] == [Run(1, 11, 101.0, 101.1, "ok")]
    report = analyze("sqlite", {"a": QUICK}, runs, {}, [], left=1, visibility_timeout=VT)
    assert not report.ok and report.lost == 0
    assert any("stuck" in p for p in report.problems) and any("never dispatched" in p for p in report.problems)
    assert analyze("sqlite", {"a": QUICK}, {"a": runs["a"]}, {}, [], 0, VT).ok
