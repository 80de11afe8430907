"""WorkerOptions: what `queue:work` was told, checked once with one clear line per mistake."""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import ConfigError
from core.job import validate_queue_name


@dataclass(frozen=True)
class WorkerOptions:
    connection: str | None = None
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 1
    sleep: float = 1.0            # idle wait between empty polls (Redis wakes at once instead)
    tries: int | None = None      # override the payload's max_tries
    timeout: float | None = None  # override the payload's timeout
    max_jobs: int = 0             # stop after this many jobs (0: no limit)
    max_time: float = 0           # stop after this many seconds (0: no limit)
    memory: int = 0               # stop when resident memory passes this many MB (0: no limit; the CLI: 128)
    stop_when_empty: bool = False
    once: bool = False

    def check(self, max_timeout: float, visibility_timeout: float) -> None:
        """Raise ConfigError for the first option out of range. `max_timeout` is the longest timeout
        a job may block the loop for without another job's reservation lapsing."""
        for queue in self.queues:
            validate_queue_name(queue)
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.tries is not None and self.tries < 1:
            raise ConfigError(f"--tries {self.tries} must be at least 1 (the first run counts as a try)")
        if not math.isfinite(self.sleep) or self.sleep < 0:
            raise ConfigError(f"--sleep {self.sleep:g} must be a number of seconds of 0 or more")
        if self.max_jobs < 0:
            raise ConfigError(f"--max-jobs {self.max_jobs} must be 0 (no limit) or more")
        if not (self.max_time >= 0) or math.isinf(self.max_time):
            raise ConfigError(f"--max-time {self.max_time:g} must be a number of seconds, 0 (no limit) or more")
        if self.memory < 0:
            raise ConfigError(f"--memory {self.memory} must be 0 (no limit) or more MB")
        if self.timeout is not None:
            _check_timeout(self.timeout, max_timeout, visibility_timeout)


def _check_timeout(timeout: float, max_timeout: float, visibility_timeout: float) -> None:
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"--timeout {timeout:g} must be a number of seconds above 0")
    if timeout > max_timeout:
        raise ConfigError(
            f"--timeout {timeout:g} is too close to QUEUE_VISIBILITY_TIMEOUT ({visibility_timeout}s): "
            f"at most {max(max_timeout, 0):g}s, or a job blocking the event loop that long lets another "
            f"running job's reservation lapse and a second worker run it")
