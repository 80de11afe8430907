"""Job middleware (SPEC 9): one feature per module, each `async def __call__(self, job, next)`."""
from core.queue.middleware.checks import InvalidMiddleware
from core.queue.middleware.context import AttemptContext, HeldLock, attempt_context, current_attempt
from core.queue.middleware.fail_on_exception import FailOnException
from core.queue.middleware.rate_limited import RateLimited
from core.queue.middleware.skip import Skip
from core.queue.middleware.throttles_exceptions import ThrottlesExceptions
from core.queue.middleware.without_overlapping import WithoutOverlapping

__all__ = ["AttemptContext", "FailOnException", "HeldLock", "InvalidMiddleware", "RateLimited", "Skip",
           "ThrottlesExceptions", "WithoutOverlapping", "attempt_context", "current_attempt"]
