"""The middleware chain shared by jobs and MQTT routes: each middleware gets the subject and `next`."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Final = Callable[[Any], Awaitable[Any]]


async def run_pipeline(middleware: Sequence[Any], subject: Any, final: Final) -> Any:
    """Run `middleware` outermost first, then `final(subject)`; returns what the chain returns.

    A middleware is `async def __call__(self, subject, next)` (or a function of the same shape, or
    a RouteMQ-style object with `async def handle(self, subject, next)`). `await next(subject)`
    runs the rest of the chain (`next()` passes the subject it was given); a middleware that does
    not call it stops the chain there, and what it returns is the chain's result."""

    async def step(index: int, current: Any) -> Any:
        if index == len(middleware):
            return await final(current)
        entry = middleware[index]
        call = getattr(entry, "handle", entry)

        def next_(subject: Any = current) -> Awaitable[Any]:
            return step(index + 1, subject)

        return await call(current, next_)

    return await step(0, subject)
