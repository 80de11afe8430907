from core.config import RedisConfig, env, env_bool, env_int
from core.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def load() -> RedisConfig:
    url = env("REDIS_URL")
    scheme = url.partition("://")[0] if "://" in url else ""
    if url and scheme not in SCHEMES:      # the message never repeats the URL: it may hold a password
        raise ConfigError(f"REDIS_URL must start with {', '.join(s + '://' for s in SCHEMES)}, got "
                          f"{'one with the scheme ' + repr(scheme) if scheme else 'no scheme'}")
    return RedisConfig(host=env("REDIS_HOST", "127.0.0.1"), port=env_int("REDIS_PORT", 6379),
                       db=env_int("REDIS_DB", 0), password=env("REDIS_PASSWORD"),
                       url=url, cluster=env_bool("REDIS_CLUSTER"),
                       prefix=env("REDIS_PREFIX", "queues:"))
