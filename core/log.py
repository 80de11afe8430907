"""Log lines to standard output (and LOG_FILE under storage/logs/), with secrets masked."""
from __future__ import annotations

import logging
import sys

from core.config import Config, project_path

FORMAT = "%(asctime)s.%(msecs)03d %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = redact(record.getMessage(), self.secrets)
            record.msg, record.args = message, ()
        return True


class RedactingFormatter(logging.Formatter):
    """The filter masks the message; this masks the whole formatted line, including a traceback
    (`exc_info`), whose last line repeats the exception's message. The whole line, because the
    traceback text is cached on the record by whichever handler formats it first."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__(FORMAT, DATEFMT)
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
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_framework", False):
            root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if config.app.log_file:
        path = project_path("storage/logs") / config.app.log_file
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler._framework = True  # type: ignore[attr-defined]
        handler.setFormatter(RedactingFormatter(config.secrets()))
        handler.addFilter(RedactSecrets(config.secrets()))
        root.addHandler(handler)
    root.setLevel(level)
