"""The click group and the wrapper that turns every error into one clear line and an exit code."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from core.errors import FrameworkError, describe_exception
from core.log import redact


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """A Laravel-style framework for MQTT apps and their job queues.

    Run `python main.py COMMAND --help` for one command's options.
    """


def command(name: str, **kwargs: Any) -> Callable:
    """Register an async function as a CLI command; it runs with the application booted."""

    def decorate(fn: Callable[..., Coroutine[Any, Any, int | None]]) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> None:
            sys.exit(run_async(fn, *args, **kw))

        return cli.command(name, **kwargs)(run)

    return decorate


def run_async(fn: Callable[..., Coroutine[Any, Any, int | None]], *args: Any, **kwargs: Any) -> int:
    from bootstrap.app import create_app

    secrets: list[str] = []
    try:
        app = create_app()
        secrets = app.config.secrets()

        async def main() -> int | None:
            async with app:
                return await fn(app, *args, **kwargs)

        return asyncio.run(main()) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()
    except FrameworkError as exc:
        return fail(str(exc), secrets)
    except Exception as exc:  # the last resort: still one line, never a traceback
        if os.environ.get("APP_DEBUG", "").lower() in {"1", "true"}:
            raise
        return fail(describe_exception(exc), secrets)


def _reader_went_away() -> int:
    """Output piped into a reader that stopped (`queue:jobs | head -1`): quiet, as a shell tool killed
    by SIGPIPE; stdout goes to /dev/null so that Python's flush at exit has nothing to complain about."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13     # 141: the shell's status for a process ended by SIGPIPE


def fail(message: str, secrets: list[str] | None = None) -> int:
    click.echo(redact(message, secrets or []), err=True)
    return 1


def print_table(headers: tuple[str, ...], rows: list[tuple]) -> None:
    """Columns padded to their widest cell, a rule under the header."""
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            click.echo("  ".join("-" * w for w in widths))
