from core.config import QueueConfig, env, env_int


def load() -> QueueConfig:
    return QueueConfig(default=env("QUEUE_CONNECTION", "database"),
                       visibility_timeout=env_int("QUEUE_VISIBILITY_TIMEOUT", 90))
