"""Queue connections behind one contract, and `dispatch` for job instances built by hand.

`dispatch` and `dispatch_many` are looked up on first use (PEP 562), not imported here: the
dispatcher uses the queue manager, which lives in this package, so importing it here would make
a circle of the two."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.errors import QueueConnectionError
from core.queue.status import (JobCancelled, JobFailed, JobNotFound, JobRef, JobStatus, ResultNotKept,
                               ResultNotSerializable, WaitTimeout, job_ref)

if TYPE_CHECKING:
    from core.dispatch import dispatch, dispatch_many

__all__ = ["JobCancelled", "JobFailed", "JobNotFound", "JobRef", "JobStatus", "QueueConnectionError",
           "ResultNotKept", "ResultNotSerializable", "WaitTimeout", "dispatch", "dispatch_many", "job_ref"]


def __getattr__(name: str) -> Any:
    if name in ("dispatch", "dispatch_many"):
        import core.dispatch

        return getattr(core.dispatch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
