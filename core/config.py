"""Typed settings, read from `.env` and the real environment by the modules under `config/`."""
from __future__ import annotations

import importlib
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote

from dotenv import load_dotenv

from core.dialects import DIALECTS
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_int(name: str, default: int) -> int:
    raw = env(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = env(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_bool(name: str, default: bool = False) -> bool:
    """A yes/no setting. Anything but the usual words is refused: a typo (MQTT_TLS=ture) read as false
    would connect in plain text without a word."""
    raw = env(name).strip()
    if not raw:
        return default
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise ConfigError(f"{name} must be true or false (1/0, yes/no, on/off), got {raw!r}")


def project_path(path: str) -> Path:
    """A path from config, relative paths taken from the project root."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


@dataclass(frozen=True)
class AppConfig:
    name: str = "mqtt-app"
    key: str = field(default="", repr=False)
    log_file: str = ""
    job_packages: tuple[str, ...] = ("app.jobs",)
    listeners: str = ""             # APP_LISTENERS: the listeners module discovered at boot ("": app.listeners)


@dataclass(frozen=True)
class DatabaseConfig:
    driver: str = "sqlite"          # a key of core.dialects.DIALECTS: sqlite | mysql | pgsql
    database: str = "storage/database.sqlite"
    host: str = "127.0.0.1"
    port: int = 3306
    username: str = "root"
    password: str = field(default="", repr=False)
    timeout: float = 30.0           # seconds a MySQL or PostgreSQL statement or transaction may take (0: no limit)
    # DB_LISTEN_URL (pgsql): the server's own address for the wake-up listener where DB_HOST is a
    # transaction pooler, which cannot LISTEN. It may hold a password.
    listen_url: str = field(default="", repr=False)
    wake: bool = True               # DB_WAKE=off: idle workers poll every --sleep, dispatchers send no wake-up

    def describe(self) -> str:
        dialect = DIALECTS.get(self.driver)
        return dialect.describe(self) if dialect else self.driver


@dataclass(frozen=True)
class RedisConfig:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str = field(default="", repr=False)
    url: str = field(default="", repr=False)
    cluster: bool = False
    prefix: str = "queues:"


# Laravel's `connections`: a name -> its driver and the driver's settings (config/queue.py).
DEFAULT_CONNECTIONS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "database": MappingProxyType({"driver": "database"}),
    "redis": MappingProxyType({"driver": "redis"}),
    "sync": MappingProxyType({"driver": "sync"}),
})


def checked_connections(connections: Mapping[Any, Any]) -> Mapping[str, Mapping[str, Any]]:
    """config/queue.py's map, frozen, once every entry is a name with a driver. The drivers
    themselves are looked up on first use: one may be registered after the file is read."""
    frozen = {}
    for name, settings in connections.items():
        if not (isinstance(name, str) and name.strip()):
            raise ConfigError(f"config/queue.py: a connection name must be a non-empty string, got {name!r}")
        if not (isinstance(settings, Mapping) and isinstance(settings.get("driver"), str) and settings["driver"]):
            raise ConfigError(f"config/queue.py: connection {name!r} needs a driver, for example "
                              '{"driver": "redis"}')
        frozen[name] = MappingProxyType(dict(settings))
    return MappingProxyType(frozen)


@dataclass(frozen=True)
class QueueConfig:
    default: str = "database"       # a name of `connections`
    connections: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: DEFAULT_CONNECTIONS)
    visibility_timeout: int = 90
    dispatch_timeout: float = 5.0   # seconds a dispatch retries an unreachable store, then QueueConnectionError
    max_payload_bytes: int = 1048576  # an encoded payload over this is refused at dispatch (0: no limit)
    replay_window: int = 900        # seconds a finished job's id is remembered: a second push of it is a no-op
    middleware: tuple[Any, ...] = ()  # config/queue.py `middleware`: around every job, outermost first


def checked_middleware(items: Any) -> tuple[Any, ...]:
    """config/queue.py's `middleware` list, each item a middleware object (not a class, not a string)."""
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"config/queue.py middleware must be a list, got {type(items).__name__}")
    for n, item in enumerate(items):
        if isinstance(item, type) or not (callable(item) or callable(getattr(item, "handle", None))):
            raise ConfigError(f"config/queue.py middleware[{n}] is {item!r}, not a middleware object "
                              "(give an instance with async __call__(job, next))")
    return tuple(items)


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str = ""
    password: str = field(default="", repr=False)
    client_id: str = ""
    tls: bool = False
    shared_group: str = "app"
    max_concurrent_messages: int = 100
    connect_timeout: float = 5.0     # seconds `run` keeps trying a broker it never reached (0: forever)
    clean_session: bool = True       # false: a persistent session (needs a fixed client_id), SPEC 18
    ca_file: str = ""                # TLS: the CA certificates that verify the broker (else the system's)
    cert_file: str = ""              # TLS client certificate (PEM; may hold the key too)
    key_file: str = ""               # its private key
    protocol: str = "3.1.1"          # "3.1.1" or "5"


@dataclass(frozen=True)
class Config:
    app: AppConfig
    queue: QueueConfig
    database: DatabaseConfig
    redis: RedisConfig
    mqtt: MqttConfig

    def secrets(self) -> list[str]:
        """Values that must never reach output, logs or stored rows."""
        values = [self.app.key, self.database.password, self.redis.password, self.mqtt.password]
        if self.redis.url:   # redis://:password@host/0 holds one too: as written, encoded and decoded
            password = split_url(self.redis.url)[1].partition(":")[2]
            values += [password, _encode_userinfo(password), unquote(_encode_userinfo(password))]
        if self.database.listen_url:     # postgresql://user:password@host/db
            password = split_url(self.database.listen_url)[1].partition(":")[2]
            values += [password, unquote(password)]
        return [v for v in values if v]


# What follows a URL's userinfo: a host (a name, an address, or [IPv6]) and a port, then a path, a
# query or the end. The userinfo ends at the last '@' so followed: a password may hold '@', '/', '?'.
_AUTHORITY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._\-]+)(:\d*)?(?=[/?#]|$)")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, userinfo, the rest from the host on) of a URL, the userinfo as written: found without
    a URL parser, which would take a '#', '/' or '?' in a password for the end of the userinfo."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", "", url
    for at in range(len(rest) - 1, -1, -1):
        if rest[at] == "@" and _AUTHORITY.match(rest, at + 1):
            return scheme, rest[:at], rest[at + 1:]
    return scheme, "", rest


def encoded_url(url: str) -> str:
    """The URL with its user name and password percent-encoded, as a URL parser (redis-py's) needs
    them; a '%XX' already there is kept, so a URL written encoded means what it meant."""
    scheme, userinfo, rest = split_url(url)
    if not userinfo:
        return url
    user, colon, password = userinfo.partition(":")
    return f"{scheme}://{_encode_userinfo(user)}{colon}{_encode_userinfo(password)}@{rest}"


def _encode_userinfo(text: str) -> str:
    return _LONE_PERCENT.sub("%25", quote(text, safe="%"))


def load_env_file(path: Path | None = None) -> None:
    """Read `.env` without overriding variables already set in the real environment. A line that cannot
    be read (an unclosed quote: DB_CONNECTION="pgsql) is one line and exit 1; python-dotenv only warns
    and skips it, and the command then ran on the default (SQLite). The message names the line, never
    its value (it may be a password)."""
    from dotenv.parser import parse_stream

    path = path or ROOT / ".env"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} cannot be read: {exc}") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            name = (binding.original.string.split("=", 1)[0].strip() or "?")[:60]
            raise ConfigError(f"{path.name} line {binding.original.line}: the setting {name!r} cannot be read "
                              "(an unclosed quote?)")
    load_dotenv(path, override=False)


def load_config() -> Config:
    load_env_file()
    parts = {name: importlib.import_module(f"config.{name}").load()
             for name in ("app", "queue", "database", "redis", "mqtt")}
    return Config(**parts)
