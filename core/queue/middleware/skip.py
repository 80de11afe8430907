"""Skip.when(condition) / Skip.unless(condition) (SPEC 9): the job is deleted unrun (state skipped).

`condition` is a bool, or a callable judged when the job is about to run: with no argument or
with the job, returning a bool (or an awaitable of one)."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from core.job import Job, intend
from core.queue.middleware.checks import InvalidMiddleware


class Skip:
    def __init__(self, condition: bool | Callable[..., Any], skip_if: bool = True) -> None:
        if not isinstance(condition, bool) and not callable(condition):
            raise InvalidMiddleware(f"Skip: the condition must be a bool or a callable, got {condition!r}")
        self.condition = condition
        self.skip_if = skip_if

    @classmethod
    def when(cls, condition: bool | Callable[..., Any]) -> "Skip":
        return cls(condition, True)

    @classmethod
    def unless(cls, condition: bool | Callable[..., Any]) -> "Skip":
        return cls(condition, False)

    async def __call__(self, job: Job, next: Any) -> Any:
        if bool(await self._judge(job)) == self.skip_if:
            intend(job, "delete", by="middleware")
            return None
        return await next(job)

    async def _judge(self, job: Job) -> Any:
        if isinstance(self.condition, bool):
            return self.condition
        value = self.condition(job) if _takes_an_argument(self.condition) else self.condition()
        return await value if inspect.isawaitable(value) else value


def _takes_an_argument(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):        # a builtin without a signature: called bare
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in parameters)
