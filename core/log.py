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
    """FORMAT (after the time, `[name] ` when `name`), with the date and time formatted once per
    second rather than once per line."""

    def __init__(self, name: str = "") -> None:
        self.tag = f"[{name}] " if name else ""
        super().__init__(FORMAT.replace("%(message)s", self.tag.replace("%", "%%") + "%(message)s"), DATEFMT)
        self._second: int | None = None
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._date(record.created)

    def line(self, message: str, created: float) -> str:
        """What format() makes of a record of `message` (no exception) created at `created`."""
        return f"{self._date(created)}.{int((created - int(created)) * 1000):03d} {self.tag}{message}"

    def _date(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(DATEFMT, self.converter(created))
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

    def __init__(self, secrets: list[str], name: str = "") -> None:
        super().__init__(name)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return redact(text, self.secrets) if self.secrets else text


def info(logger: logging.Logger, message: str) -> None:
    """`logger.info(message)` for the lines a worker writes per job (RUNNING, DONE): written straight
    to the framework's handlers, the same text, when they are the only ones that would see it (no
    handler or filter of anyone else's on the way); else logged as usual, so a handler a user or a
    test (caplog) adds gets its record. A LogRecord, its filter and its formatting were a fifth of
    a worker's time at concurrency 1 (bench/ours.py, a no-op job)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handlers = _direct(logger)
    if handlers is None:
        logger.info("%s", message)
        return
    created = time.time()
    for handler in handlers:
        formatter: RedactingFormatter = handler.formatter      # type: ignore[assignment]
        text = formatter.line(message, created)
        if formatter.secrets:
            text = redact(text, formatter.secrets)
        handler.acquire()
        try:
            handler.stream.write(text + handler.terminator)
            handler.flush()
        except Exception:  # noqa: BLE001 - as Handler.emit: a log line never breaks the worker
            pass
        finally:
            handler.release()


def _direct(logger: logging.Logger) -> list[logging.StreamHandler] | None:
    """The root's handlers, if info() may write to them directly. Asked on every line (a few
    attribute reads): a handler, filter or level anyone sets at any time is heeded from the next."""
    root = logging.root
    if logger.handlers or logger.filters or not logger.propagate or logger.parent is not root or root.filters:
        return None
    handlers = root.handlers
    return handlers if all(_framework_line(handler) for handler in handlers) else None    # type: ignore[return-value]


def _framework_line(handler: logging.Handler) -> bool:
    """A handler configure_logging made, as it made it: our formatter and filter, no other, no level above INFO."""
    return (getattr(handler, "_framework", False) and isinstance(handler, logging.StreamHandler)
            and type(handler.formatter) is RedactingFormatter and handler.level <= logging.INFO
            and len(handler.filters) == 1 and type(handler.filters[0]) is RedactSecrets)


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
    name = os.environ.get(WORKER_NAME_ENV, "")
    for handler in handlers:
        handler._framework = True  # type: ignore[attr-defined]
        handler.setFormatter(RedactingFormatter(config.secrets(), name))
        handler.addFilter(RedactSecrets(config.secrets()))
        root.addHandler(handler)
    root.setLevel(level)
