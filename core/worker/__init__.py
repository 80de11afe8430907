"""The worker: takes jobs from a queue connection, runs them with timeouts, retries and fails them.

loop.py reserves and stops; attempt.py runs one attempt and says how it ended (outcome.py);
settle.py stores that; limits.py says what a reserved job may still do (tries, releases, retry_until,
expires_after); timeouts.py keeps job code to its deadline; heartbeat.py renews the
reservations held; supervisor.py keeps N worker processes running.
"""
from core.worker.attempt import Attempt, MaxAttemptsExceededError, RecordedFailure, discover_job_classes, invoke
from core.worker.heartbeat import heartbeat_interval
from core.worker.limits import JobExpired, RetryDeadlinePassed, TooManyReleases
from core.worker.loop import Worker
from core.worker.options import WorkerOptions
from core.worker.outcome import Delete, Done, Fail, Outcome, Release, Retry, exception_text
from core.worker.timeouts import (CANCEL_GRACE, EXIT_BLOCKED, JobInterrupted, JobTimeoutError, LeftBehind, Watchdog,
                                  max_blocking_timeout, run_guarded)

__all__ = ["Attempt", "CANCEL_GRACE", "Delete", "Done", "EXIT_BLOCKED", "Fail", "JobExpired", "JobInterrupted",
           "JobTimeoutError", "LeftBehind", "MaxAttemptsExceededError", "Outcome", "RecordedFailure", "Release",
           "Retry",
           "RetryDeadlinePassed", "TooManyReleases", "Watchdog",
           "Worker", "WorkerOptions", "discover_job_classes", "exception_text", "heartbeat_interval", "invoke",
           "max_blocking_timeout", "run_guarded"]
