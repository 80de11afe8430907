import math
from urllib.parse import urlsplit

from core.config import DatabaseConfig, env, env_bool, env_float, env_int
from core.dialects import DIALECTS
from core.errors import ConfigError


def load() -> DatabaseConfig:
    driver = env("DB_CONNECTION", "sqlite")
    default_db = "storage/database.sqlite" if driver == "sqlite" else "app"
    dialect = DIALECTS.get(driver)
    default_port = dialect.default_port if dialect is not None and dialect.default_port else 3306
    return DatabaseConfig(driver=driver, database=env("DB_DATABASE", default_db),
                          host=env("DB_HOST", "127.0.0.1"), port=env_int("DB_PORT", default_port),
                          username=env("DB_USERNAME", "root"), password=env("DB_PASSWORD"),
                          timeout=_timeout(env_float("DB_TIMEOUT", 30.0)),
                          listen_url=_listen_url(env("DB_LISTEN_URL")), wake=env_bool("DB_WAKE", True))


def _timeout(seconds: float) -> float:
    if math.isnan(seconds) or seconds < 0:
        raise ConfigError(f"DB_TIMEOUT must be a number of seconds, 0 (no limit) or more, got {seconds:g}")
    return seconds


def _listen_url(url: str) -> str:
    """DB_LISTEN_URL (PostgreSQL's wake-up listener) checked now: a malformed one was found only by the
    listener, which then retried it for good. The message never repeats the URL (it may hold a password)."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError("DB_LISTEN_URL must be a postgresql:// URL (postgresql://user:password@host:5432/database)"
                          f", got {'one with the scheme ' + repr(parts.scheme) if parts.scheme else 'no scheme'}")
    try:
        _ = parts.port          # raises for a port that is not a number in range
    except ValueError:
        raise ConfigError("DB_LISTEN_URL has a port that is not a number from 1 to 65535") from None
    return url
