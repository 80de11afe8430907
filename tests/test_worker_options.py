"""queue:work checks --tries and --timeout where they are given: one clear line and a non-zero exit (issue 11,
findings 4 and 6)."""
from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize("args, line", [
    (["--tries", "0"], "--tries 0 must be at least 1 (the first run counts as a try)"),
    (["--tries", "-2"], "--tries -2 must be at least 1 (the first run counts as a try)"),
    (["--timeout", "0"], "--timeout 0 must be a number of seconds above 0"),
    (["--timeout", "-1.5"], "--timeout -1.5 must be a number of seconds above 0"),
    (["--timeout", "nan"], "--timeout nan must be a number of seconds above 0"),
    (["--timeout", "inf"], "--timeout inf must be a number of seconds above 0"),
    (["--processes", "2", "--tries", "0"], "--tries 0 must be at least 1 (the first run counts as a try)"),
])
def test_tries_and_timeout_out_of_range_are_refused_with_one_line(args, line):
    result = run_cli("queue:work", "--stop-when-empty", *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [line]
    assert "Worker started" not in result.stdout


@pytest.mark.parametrize("visibility, timeout, limit", [("90", "87", "86.95"), ("4", "2", "1.95"), ("1", "0.1", "0")])
def test_a_timeout_too_close_to_the_visibility_timeout_is_refused(monkeypatch, visibility, timeout, limit):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", visibility)
    result = run_cli("queue:work", "--stop-when-empty", "--timeout", timeout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"--timeout {timeout} is too close to QUEUE_VISIBILITY_TIMEOUT ({visibility}s): at most {limit}s, or a job "
        f"blocking the event loop that long lets another running job's reservation lapse and a second worker run it"]


def test_the_largest_accepted_timeout_starts(monkeypatch):
    monkeypatch.setenv("QUEUE_VISIBILITY_TIMEOUT", "4")
    result = run_cli("queue:work", "--stop-when-empty", "--timeout", "1.95", "--tries", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Worker stopped (queue empty)" in result.stdout
