"""The current application: the one dispatch and the commands use in this process.

A leaf: it imports nothing of ours at import time, so any module may use it without a circle.
core/app.py registers an application here as it starts (`async with create_app()`); the first
use without one boots one from config (the import of core.app happens then, not before).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.app import Application

_current: "Application | None" = None


def set_current(app: "Application | None") -> None:
    global _current
    _current = app


def current_or_none() -> "Application | None":
    return _current


def current() -> "Application":
    """The application, booted from config on first use."""
    global _current
    if _current is None:
        from core.app import Application

        _current = Application()
        logging.getLogger("app").debug("application booted lazily from config")
    return _current
