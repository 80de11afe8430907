"""The chaos test's judge must catch what it is there to catch: a lost job, a stuck queue, a job run
twice by live workers, an attempt that vanished without a kill, a job missing beyond what queue:clear
removed, failed() run twice, a stale failed row, the wrong exception recorded. Synthetic histories,
no processes."""
from __future__ import annotations

from dataclasses import replace

from tests.chaos.analysis import (EXHAUSTED, PLANNED, Clear, FailedCall, Kill, KillLog, PlannedJob, Retry, Run,
                                  analyze, judge, judge_job, read_failed_calls, read_runs)

VT = 2
QUICK = PlannedJob("quick", max_tries=3, fail_until=0, seconds=0.1, dispatched_at=100.0)
DOOMED = PlannedJob("doomed", max_tries=3, fail_until=4, seconds=0.1, dispatched_at=100.0)


def verdict(plan, runs, failure=None, kills=()):
    return judge("job-0001", plan, runs, failure, KillLog(list(kills)), VT)


def test_one_successful_run_is_clean():
    v = verdict(QUICK, [Run(1, 11, 101.0, 101.1, "ok")])
    assert (v.outcome, v.problems, v.reruns) == ("succeeded", [], 0)


def test_a_job_neither_succeeded_nor_failed_is_missing_and_lost_unless_queue_clear_accounts_for_it():
    assert verdict(QUICK, []).outcome == "missing"
    runs = {"a": [Run(1, 11, 101.0, 101.1, "fail")]}
    report = analyze("sqlite", {"a": QUICK}, runs, {}, [], 0, VT)
    assert (report.missing, report.lost) == (1, 1) and report.problems[0].startswith("lost")
    assert any(p.startswith("a: missing") for p in report.problems)
    cleared = analyze("sqlite", {"a": QUICK}, runs, {}, [], 0, VT, clears=[Clear(101.5, 1)])
    assert cleared.ok and (cleared.missing, cleared.cleared, cleared.lost) == (1, 1, 0)


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
    assert verdict(QUICK, [Run(1, 11, 101.0, 101.1, "fail")], failure="RuntimeError: x").outcome == "wrong"


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


def fails(*attempts, pid=11, t0=100.0):
    return [Run(n, pid, t0 + n, t0 + n + 0.1, "fail") for n in attempts]


def call(attempt, pid, at):
    return FailedCall(attempt, pid, at, "PlannedFailure")


def test_queue_clear_may_not_account_for_more_than_the_missing_jobs_and_those_back_after_a_kill():
    done = {"a": [Run(1, 11, 101.0, 101.1, "ok")]}
    surplus = analyze("sqlite", {"a": QUICK}, done, {}, [], 0, VT, clears=[Clear(102.0, 1)])
    assert "more than are missing" in surplus.problems[0]          # a finished job was back on the queue
    killed = analyze("sqlite", {"a": QUICK}, done, {}, [Kill(11, 101.2, 101.3)], 0, VT, clears=[Clear(102.0, 1)])
    assert killed.ok                    # its worker died before acknowledging: it came back, and was cleared


def test_a_job_put_back_by_queue_retry_starts_a_new_generation_that_may_run_again():
    runs = fails(1, 2, 3) + [Run(1, 12, 110.0, 110.1, "ok")]
    calls = [call(3, 11, 103.2)]
    v = judge_job("job-0001", DOOMED, runs, calls, None, KillLog([]), VT, [105.0])
    assert (v.outcome, v.problems, v.retry_runs, v.generations) == ("succeeded", [], 1, 2)
    without = judge_job("job-0001", DOOMED, runs, calls, None, KillLog([]), VT, [])
    assert any("held twice" in p for p in without.problems)
    report = analyze("sqlite", {"job-0001": DOOMED}, {"job-0001": runs}, {}, [], 0, VT, {"job-0001": calls},
                     retries=[Retry(105.0, frozenset({"job-0001"}))])
    assert report.ok and (report.dup_retry, report.retried, report.unexplained) == (1, 1, 0)


def test_a_failed_row_written_again_after_queue_retry_took_it_back_is_stale():
    calls = [call(3, 11, 103.2)]
    v = judge_job("job-0001", DOOMED, fails(1, 2, 3), calls, f"{PLANNED}: planned failure on attempt 3", KillLog([]),
                  VT, [103.3])
    assert (v.outcome, v.stale) == ("stale", 1) and "written again" in v.problems[0]
    twice = judge_job("job-0001", DOOMED, fails(1, 2, 3), calls, None, KillLog([]), VT, [103.3, 104.0])
    assert (twice.outcome, twice.stale) == ("missing", 1)


def test_a_retried_job_whose_every_try_went_to_a_killed_worker_may_end_out_of_tries_without_a_run():
    # Seen on SQLite: put back at 103.3, reserved three times by workers killed before they started
    # it (their loops blocked), then found at attempt 4 of 3. Like a first generation with no run
    # (SPEC 5: a killed worker's reservation comes back and counts the attempt), each try needs a kill
    # and a visibility timeout.
    calls = [call(3, 11, 103.2), FailedCall(4, 14, 116.0, "MaxAttemptsExceededError")]
    exhausted = f"{EXHAUSTED}: ChaosJob reached attempt 4 of 3"
    three = [Kill(12, 104.0, 104.1), Kill(13, 108.5, 108.6), Kill(15, 113.0, 113.1)]
    kills = KillLog(three)
    v = judge_job("job-0001", DOOMED, fails(1, 2, 3), calls, exhausted, kills, VT, [103.3])
    assert (v.outcome, v.stale, v.problems) == ("failed-after-kills", 0, [])
    unexplained = judge_job("job-0001", DOOMED, fails(1, 2, 3), calls, exhausted, KillLog(three[:1]), VT, [103.3])
    assert any("without a run and without a kill" in p for p in unexplained.problems)
    # the same for a generation a later queue:retry took back, by the row it took
    rows = {103.3: f"{PLANNED}: planned failure on attempt 3", 117.0: exhausted}
    v = judge_job("job-0001", DOOMED, fails(1, 2, 3), calls, None, kills, VT, [103.3, 117.0], rows)
    assert (v.stale, v.problems) == (0, []), v.problems
    unknown = judge_job("job-0001", DOOMED, fails(1, 2, 3), calls, None, kills, VT, [103.3, 117.0])
    assert unknown.stale == 1 and "written again" in unknown.problems[0]


def test_a_job_retried_while_its_worker_was_failing_it_and_never_seen_again_is_lost():
    calls = [call(3, 11, 103.2)]
    report = analyze("redis", {"a": DOOMED}, {"a": fails(1, 2, 3)}, {}, [], 0, VT, {"a": calls},
                     retries=[Retry(103.3, frozenset({"a"}))])
    assert report.lost == 1 and not report.ok


def test_a_failed_row_for_a_job_whose_last_run_succeeded_is_stale():
    ok = [Run(1, 11, 101.0, 101.1, "ok")]
    v = verdict(QUICK, ok, failure=f"{PLANNED}: planned failure on attempt 3")
    assert (v.outcome, v.stale) == ("stale", 1) and "stale failed row" in v.problems[0]
    # queue:retry found a row for a generation that had succeeded
    runs = fails(1, 2, 3) + [Run(4, 12, 104.5, 104.6, "ok")]
    v = judge_job("job-0001", DOOMED, runs, [call(3, 11, 103.2)], None, KillLog([]), VT, [106.0])
    assert v.stale == 1
    # out of tries because the worker died before acknowledging: not stale
    killed = verdict(QUICK, ok, failure=f"{EXHAUSTED}: ...", kills=[Kill(11, 101.2, 101.3)])
    assert (killed.outcome, killed.stale) == ("failed-after-kills", 0)


def test_a_row_queue_retry_took_back_is_weighed_by_its_exception_like_a_row_left_at_the_end():
    # Attempt 3 succeeded, its worker was killed before acknowledging it, so attempt 4 found the
    # job out of tries and recorded that (SPEC 5: a killed worker's job comes back and counts the
    # attempt); queue:retry then took that row back, and the job ran and succeeded.
    flaky = replace(DOOMED, kind="flaky", fail_until=3)
    runs = fails(1, 2) + [Run(3, 11, 102.5, 102.6, "ok"), Run(1, 13, 108.0, 108.1, "ok")]
    calls = [FailedCall(4, 12, 107.0, "MaxAttemptsExceededError")]
    killed = KillLog([Kill(11, 102.8, 102.9)])
    exhausted = {107.5: f"{EXHAUSTED}: ChaosJob reached attempt 4 of 3"}
    v = judge_job("job-0001", flaky, runs, calls, None, killed, VT, [107.5], exhausted)
    assert (v.outcome, v.stale, v.extra_calls, v.problems) == ("succeeded", 0, 0, [])
    # the same row, but the worker that ran attempt 3 lived on: its acknowledgement should have landed
    v = judge_job("job-0001", flaky, runs, calls, None, KillLog([]), VT, [107.5], exhausted)
    assert v.stale == 1 and "stale failed row" in v.problems[0]
    # a planned failure taken back although attempt 3 succeeded is stale, killed or not
    planned = {107.5: f"{PLANNED}: planned failure on attempt 3"}
    assert judge_job("job-0001", flaky, runs, calls, None, killed, VT, [107.5], planned).stale == 1
    # and analyze() passes the rows queue:retry reported on to the judge
    retry = Retry(107.5, frozenset({"job-0001"}), {"job-0001": exhausted[107.5]})
    report = analyze("mysql", {"job-0001": flaky}, {"job-0001": runs}, {}, [Kill(11, 102.8, 102.9)], 0, VT,
                     {"job-0001": calls}, retries=[retry])
    assert report.ok and report.stale_rows == 0, report.problems


def test_failed_runs_once_per_failure_unless_a_kill_cut_the_first_call_short():
    row = f"{PLANNED}: planned failure on attempt 3"
    twice = [call(3, 11, 103.2), call(4, 12, 108.0)]
    v = judge("job-0001", DOOMED, fails(1, 2, 3), row, KillLog([]), VT, twice)
    assert v.extra_calls == 1 and "failed() ran 2 time(s)" in v.problems[0]
    v = judge("job-0001", DOOMED, fails(1, 2, 3), row, KillLog([Kill(11, 103.3, 103.4)]), VT, twice)
    assert (v.extra_calls, v.problems) == (0, [])
    # killed long after: by then it had marked that failed() ran, so the next worker must not call it again
    late = judge("job-0001", DOOMED, fails(1, 2, 3), row, KillLog([Kill(11, 103.2 + VT, 103.3 + VT)]), VT, twice)
    assert late.extra_calls == 1
    assert "failed() never ran" in judge("job-0001", DOOMED, fails(1, 2, 3), row, KillLog([]), VT, []).problems[0]
    assert "no failure" in judge("job-0001", QUICK, [Run(1, 11, 101.0, 101.1, "ok")], None, KillLog([]), VT,
                                 [call(1, 11, 100.5)]).problems[0]


def test_a_run_after_failed_ran_needs_a_queue_retry():
    runs = fails(1, 2, 3) + [Run(4, 12, 108.0, 108.1, "ok")]
    v = judge("job-0001", replace(DOOMED, max_tries=4), runs, None, KillLog([]), VT, [call(3, 11, 103.2)])
    assert any("after failed() had run" in p for p in v.problems) and v.unexplained == 1


def test_out_of_tries_after_a_planned_failure_in_a_live_worker_is_the_wrong_exception():
    exhausted = f"{EXHAUSTED}: reached attempt 4 of 3"
    v = judge("job-0001", DOOMED, fails(1, 2, 3), exhausted, KillLog([]), VT, [call(3, 11, 103.2), call(4, 12, 108)])
    assert v.outcome == "wrong" and "wrong exception" in v.problems[0]
    killed = KillLog([Kill(11, 103.3, 103.4)])      # the worker died before marking the planned failure
    v = judge("job-0001", DOOMED, fails(1, 2, 3), exhausted, killed, VT, [call(3, 11, 103.2), call(4, 12, 108)])
    assert (v.outcome, v.problems) == ("failed-after-kills", [])
    late = KillLog([Kill(11, 103.1 + VT, 103.2 + VT)])   # stuck recording it (the failed store cut), then killed
    v = judge("job-0001", DOOMED, fails(1, 2, 3), exhausted, late, VT, [call(3, 11, 103.2), call(4, 12, 108)])
    assert v.outcome == "wrong" and "wrong exception" in v.problems[0]


def test_failed_lines_are_read_beside_the_runs(tmp_path):
    log = tmp_path / "runs.log"
    log.write_text("start a 3 11 101.0\nend a 3 11 101.1 fail\nfailed a 3 11 101.2 PlannedFailure\n")
    assert read_runs(log) == {"a": [Run(3, 11, 101.0, 101.1, "fail")]}
    assert read_failed_calls(log) == {"a": [FailedCall(3, 11, 101.2, "PlannedFailure")]}
