"""Console commands, thin: each parses options, calls one service in core/, prints the result."""
from core.console.base import cli

# Importing a module registers its commands on `cli`.
from core.console import queue_commands, work_command, make_commands  # noqa: E402,F401
from core.console import mqtt_commands, status_commands  # noqa: E402,F401

__all__ = ["cli"]
