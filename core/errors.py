"""Errors that reach the user as one clear line."""
from __future__ import annotations


class FrameworkError(Exception):
    """An error whose message is written for the user; the CLI prints it as one line."""


class ConfigError(FrameworkError):
    pass


class ConnectionFailed(FrameworkError):
    """A store (database, Redis, broker) could not be reached."""


class QueueConnectionError(ConnectionFailed):
    """A dispatch found its queue's store unreachable for QUEUE_DISPATCH_TIMEOUT seconds.

    The job is not stored, unless the store took it and only its answer was lost on the way back
    (then it runs as usual): never is a job reported as pushed that was not stored.
    """


class InvalidQueueName(FrameworkError, ValueError):
    pass


class NotSupported(FrameworkError):
    """A command asked a queue connection for something its driver does not offer (queue:size sync)."""


def describe_exception(exc: BaseException) -> str:
    """One line for an unexpected error: its type and message, first line only."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
