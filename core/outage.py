"""OutageLog: a store that cannot be reached is reported once when it goes and once when it is back."""
from __future__ import annotations

import logging
import threading
import time

from core.log import redact
from core.queue.contract import QueueConnection


class OutageLog:
    """The retries in between go to the debug level: an outage of an hour is two lines, not thousands.

    Thread-safe: the worker's heartbeat reports from a thread of its own."""

    def __init__(self, logger: logging.Logger, conn: QueueConnection, secrets: list[str]) -> None:
        self.logger = logger
        self.conn = conn
        self.secrets = secrets
        self.since: float | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> bool:
        """Note a failed call; False when `exc` is not a connection error (the caller reports it)."""
        reason = self.conn.connection_error(exc)
        if reason is None:
            return False
        reason = redact(reason, self.secrets)
        with self._lock:    # lines in order, and one "lost" line when two threads fail at once
            if self.since is None:
                self.since = time.monotonic()
                self.logger.error("Lost the connection to %s: %s; reconnecting with backoff", self.conn.describe(),
                                  reason)
            else:
                self.logger.debug("%s still unreachable: %s", self.conn.describe(), reason)
        return True

    def recovered(self) -> None:
        """A call succeeded: if an outage was reported, report its end."""
        if self.since is None:     # the common case, without the lock
            return
        with self._lock:
            if self.since is not None:
                took = time.monotonic() - self.since
                self.logger.info("Connection to %s is back after %.1fs", self.conn.describe(), took)
                self.since = None
