from core.config import QueueConfig, env, env_float, env_int


def load() -> QueueConfig:
    return QueueConfig(default=env("QUEUE_CONNECTION", "database"),
                       visibility_timeout=env_int("QUEUE_VISIBILITY_TIMEOUT", 90),
                       dispatch_timeout=max(0.0, env_float("QUEUE_DISPATCH_TIMEOUT", 5.0)))
