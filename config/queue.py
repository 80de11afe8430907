import math

from core.config import QueueConfig, checked_connections, checked_middleware, env, env_float, env_int
from core.errors import ConfigError

# Named connections (Laravel's `connections`): a name -> its driver, plus any settings the driver
# reads. QUEUE_CONNECTION names the default one; `queue:work NAME`, `.on_connection(NAME)`, a job's
# `connection = NAME` and failed_jobs.connection use these names. Drivers: database, redis, sync,
# and any registered with core.queue.manager.register_driver (call it here: every process reads
# this file as it boots). Add your own names, for example a second Redis connection for urgent
# work that its own workers drain:  "redis-high": {"driver": "redis"},
CONNECTIONS = {
    "database": {"driver": "database"},
    "redis": {"driver": "redis"},
    "sync": {"driver": "sync"},
}


# Job middleware around every job's handle(), outermost first, before the job's own middleware():
# objects with `async def __call__(self, job, next)`. Read from here by the worker, never from a payload.
# from core.queue.middleware import ...
middleware: list = []


def load() -> QueueConfig:
    # Each setting is checked here, where it is given (SPEC 5), so every command refuses a bad one
    # with one clear line rather than a worker misbehaving with it later.
    max_payload = env_int("QUEUE_MAX_PAYLOAD_BYTES", 1048576)
    if max_payload < 0:
        raise ConfigError(f"QUEUE_MAX_PAYLOAD_BYTES must be 0 (no limit) or more, got {max_payload}")
    visibility = env_int("QUEUE_VISIBILITY_TIMEOUT", 90)
    if visibility < 1:    # 0 or less: every reservation lapses at once, so one job starts again and again
        raise ConfigError(f"QUEUE_VISIBILITY_TIMEOUT must be a whole number of seconds of at least 1, got {visibility}")
    window = env_int("QUEUE_REPLAY_WINDOW", 900)
    if window < 60:       # shorter than a lost answer's retry and a worker's recovery may take
        raise ConfigError(f"QUEUE_REPLAY_WINDOW must be a whole number of seconds of at least 60, got {window}")
    dispatch_timeout = env_float("QUEUE_DISPATCH_TIMEOUT", 5.0)
    if not (math.isfinite(dispatch_timeout) and dispatch_timeout >= 0):
        raise ConfigError("QUEUE_DISPATCH_TIMEOUT must be a finite number of seconds of 0 (no retry) or more, "
                          f"got {env('QUEUE_DISPATCH_TIMEOUT')!r}")
    connections = checked_connections(CONNECTIONS)
    default = env("QUEUE_CONNECTION", "database")
    if default not in connections:
        raise ConfigError(f"QUEUE_CONNECTION must name a connection of config/queue.py ({', '.join(connections)}), "
                          f"got {default!r}")
    return QueueConfig(default=default, connections=connections, visibility_timeout=visibility,
                       dispatch_timeout=dispatch_timeout, max_payload_bytes=max_payload, replay_window=window,
                       middleware=checked_middleware(middleware))

