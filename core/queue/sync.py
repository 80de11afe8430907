"""The sync connection: a pushed job runs at once, in the dispatching process. It keeps no jobs,
so it offers no QueueAdmin (queue:size, queue:clear, queue:restart say so)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.dispatch import run_now
from core.job import resolve_job_class
from core.payload import Payload
from core.queue.contract import QueueConnection, ReservedJob

if TYPE_CHECKING:
    from core.app import Application


class SyncQueue(QueueConnection):
    name = "sync"
    runs_inline = True

    def __init__(self, app: "Application") -> None:
        self.app = app

    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        decoded = Payload.decode(payload, self.app.config.app.key)
        cls = resolve_job_class(decoded.job, self.app.config.app.job_packages)
        await run_now(cls.from_payload(decoded, attempts=1), decoded)   # under the payload's own id

    async def reserve(self, queues: Sequence[str], claim: str | None = None) -> ReservedJob | None:
        return None

    async def acknowledge(self, job: ReservedJob) -> bool:
        return True

    async def release(self, job: ReservedJob, delay: float = 0, *, free: bool = False) -> bool:
        return True

    async def mark_failing(self, job: ReservedJob, exception: str, failed_ran: bool = False) -> bool:
        return True

    async def fail(self, job: ReservedJob, exception: str) -> bool:
        return True

    async def extend(self, jobs: Sequence[ReservedJob]) -> None:
        return None
