from core.config import QueueConfig, env, env_float, env_int
from core.errors import ConfigError


def load() -> QueueConfig:
    max_payload = env_int("QUEUE_MAX_PAYLOAD_BYTES", 1048576)
    if max_payload < 0:
        raise ConfigError(f"QUEUE_MAX_PAYLOAD_BYTES must be 0 (no limit) or more, got {max_payload}")
    return QueueConfig(default=env("QUEUE_CONNECTION", "database"),
                       visibility_timeout=env_int("QUEUE_VISIBILITY_TIMEOUT", 90),
                       dispatch_timeout=max(0.0, env_float("QUEUE_DISPATCH_TIMEOUT", 5.0)),
                       max_payload_bytes=max_payload,
                       replay_window=env_int("QUEUE_REPLAY_WINDOW", 900))
