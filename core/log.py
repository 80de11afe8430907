"""Log lines to standard output (and LOG_FILE under storage/logs/), with secrets masked."""
from __future__ import annotations

import logging
import os
import sys

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
    name = os.environ.get(WORKER_NAME_ENV, "").replace("%", "%%")
    fmt = f"%(asctime)s.%(msecs)03d [{name}] %(message)s" if name else FORMAT
    for handler in handlers:
        handler._framework = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(fmt, DATEFMT))
        handler.addFilter(RedactSecrets(config.secrets()))
        root.addHandler(handler)
    root.setLevel(level)
