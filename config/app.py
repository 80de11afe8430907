import re
from pathlib import PurePath

from core.config import AppConfig, env
from core.errors import ConfigError

PACKAGE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load() -> AppConfig:
    packages = tuple(p.strip() for p in env("JOB_PACKAGES", "app.jobs").split(",") if p.strip())
    if not packages or not all(PACKAGE.fullmatch(p) for p in packages):
        raise ConfigError(f"JOB_PACKAGES must name Python packages, comma-separated (app.jobs,billing.jobs), "
                          f"got {env('JOB_PACKAGES')!r}")
    return AppConfig(name=env("APP_NAME", "mqtt-app"), key=env("APP_KEY"),
                     log_file=_log_file(env("LOG_FILE").strip()), job_packages=packages,
                     listeners=env("APP_LISTENERS").strip())


def _log_file(name: str) -> str:
    """LOG_FILE: a file under storage/logs/ (SPEC 3), never a path that leaves it."""
    path = PurePath(name)
    if name and (path.is_absolute() or ".." in path.parts):
        raise ConfigError(f"LOG_FILE must be a file name under storage/logs/ (worker.log, or workers/emails.log), "
                          f"got {name!r}")
    return name
