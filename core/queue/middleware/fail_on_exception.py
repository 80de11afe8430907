"""FailOnException([...]) (SPEC 9): these exceptions fail the job at once (failed() once, then
failed_jobs), no retry. Given exception classes, or a callable (exception, job) -> bool.

The classes are kept as their class paths and matched on the exception's MRO (as dont_retry is), so
the middleware travels in a payload (`.through([FailOnException([...])])`): a worker imports
nothing a payload names to answer. A callable cannot travel; it is for middleware() and config."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from core.job import Job, intend, intent_of
from core.options import class_path, exception_matches
from core.queue.middleware.checks import InvalidMiddleware


class FailOnException:
    def __init__(self, exceptions: Iterable[type[BaseException]] | Callable[[BaseException, Job], bool]) -> None:
        if isinstance(exceptions, type) or not (callable(exceptions) or _classes(exceptions)):
            raise InvalidMiddleware(f"FailOnException: give a list of exception classes or a callable "
                                    f"(exception, job) -> bool, got {exceptions!r}")
        self.matches = exceptions if callable(exceptions) else [class_path(c) for c in exceptions]

    async def __call__(self, job: Job, next: Any) -> Any:
        try:
            return await next(job)
        except Exception as exc:
            recorded = intent_of(job)
            if not self._fails(exc, job) or (recorded is not None and recorded.kind != "retry"):
                raise
            intend(job, "fail", exception=exc, by="middleware")
            return None

    def _fails(self, exc: Exception, job: Job) -> bool:
        if isinstance(self.matches, (list, tuple)):
            return exception_matches(exc, self.matches)
        return bool(self.matches(exc, job))


def _classes(items: Any) -> bool:
    try:
        items = list(items)
    except TypeError:
        return False
    return all(isinstance(c, type) and issubclass(c, BaseException) for c in items)
