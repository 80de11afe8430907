"""A middleware: `async def mw(context, next)`; `await next(context)` runs the rest of the chain."""
from __future__ import annotations

import logging
import time
from typing import Any

from core.router import MessageContext, Next

log = logging.getLogger("app.middleware")


async def log_timing(context: MessageContext, next: Next) -> Any:
    started = time.perf_counter()
    try:
        return await next(context)
    finally:
        log.info("%s handled in %.1f ms", context.topic, (time.perf_counter() - started) * 1000)


async def require_json_object(context: MessageContext, next: Next) -> Any:
    """Stops the chain (the handler never runs) for payloads that are not a JSON object."""
    if not isinstance(context.payload, dict):
        log.warning("%s: ignored, payload is not a JSON object", context.topic)
        return None
    return await next(context)
