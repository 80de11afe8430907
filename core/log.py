"""Log lines to standard output (and LOG_FILE under storage/logs/), with secrets masked."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from core.config import Config, project_path

FORMAT = "%(asctime)s.%(msecs)03d %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"
WORKER_NAME_ENV = "QUEUE_WORKER_NAME"   # set by `queue:work --processes N` on each worker: "worker 2"


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = redact(record.getMessage(), self.secrets)
            record.msg, record.args = message, ()
        return True


class LineFormatter(logging.Formatter):
    """FORMAT, with the date and time formatted once per second rather than once per line."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt, DATEFMT)
        self._second: int | None = None
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime(DATEFMT, self.converter(record.created))
        return self._text


class LoopFlushingHandler(logging.StreamHandler):
    """Inside a running event loop, flushes once per loop turn instead of once per line (a busy
    worker writes thousands of lines a second); anywhere else, at once as usual."""

    _scheduled = False

    def flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return super().flush()
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._scheduled = False
        super().flush()


class RedactingFormatter(LineFormatter):
    """The filter masks the message; this masks the whole formatted line, including a traceback
    (`exc_info`), whose last line repeats the exception's message. The whole line, because the
    traceback text is cached on the record by whichever handler formats it first."""

    def __init__(self, secrets: list[str], fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return redact(text, self.secrets) if self.secrets else text


def one_line(text: str, limit: int = 200) -> str:
    """Text from outside (a stored job id, an MQTT topic) made safe for one log line: control
    characters and undecodable bytes escaped, so it cannot forge or break lines; cut at `limit`."""
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def configure_logging(config: Config, level: int = logging.INFO) -> None:
    # Nothing we print uses the caller's file, the thread or the process name: not collecting them
    # makes every log line (a worker writes two per job) cheaper (Logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_framework", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [LoopFlushingHandler(sys.stdout)]
    if config.app.log_file:
        path = project_path("storage/logs") / config.app.log_file
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    name = os.environ.get(WORKER_NAME_ENV, "").replace("%", "%%")
    fmt = f"%(asctime)s.%(msecs)03d [{name}] %(message)s" if name else FORMAT
    for handler in handlers:
        handler._framework = True  # type: ignore[attr-defined]
        handler.setFormatter(RedactingFormatter(config.secrets(), fmt))
        handler.addFilter(RedactSecrets(config.secrets()))
        root.addHandler(handler)
    root.setLevel(level)
