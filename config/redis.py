from core.config import RedisConfig, env, env_bool, env_int


def load() -> RedisConfig:
    return RedisConfig(host=env("REDIS_HOST", "127.0.0.1"), port=env_int("REDIS_PORT", 6379),
                       db=env_int("REDIS_DB", 0), password=env("REDIS_PASSWORD"),
                       url=env("REDIS_URL"), cluster=env_bool("REDIS_CLUSTER"),
                       prefix=env("REDIS_PREFIX", "queues:"))
