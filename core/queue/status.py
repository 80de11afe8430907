"""SPEC 11: what a caller can ask about a job it dispatched. JobRef (the id, a str) with status(),
wait() and cancel(); JobStatus in the one vocabulary of states; the result record a store keeps.

A store answers `job_status` by reading the queue, then its results, then failed_jobs, in that
order: a job moves queue -> results in one atomic step, and queue -> failed_jobs writes the row
before it deletes the job, so a job that exists is never reported `unknown`.
"""
from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from core.context import current
from core.errors import FrameworkError
from core.options import KEEP_RESULT

if TYPE_CHECKING:
    from core.queue.contract import QueueConnection

STATES = ("pending", "delayed", "reserved", "waiting", "completed", "failed", "superseded", "skipped",
          "cancelled", "unknown")
FINAL = frozenset({"completed", "failed", "skipped", "cancelled"})
CANCEL_KEEP = 86400.0     # seconds a cancelled job's record is kept at least (longer when it keeps results)
POLL_FIRST, POLL_MAX = 0.05, 0.5     # SQL stores: wait() polls 50 ms doubling to 0.5 s (seen within a second)


class JobFailed(FrameworkError):
    """wait(): the job failed for good. `exception_class`, `message`, `traceback` from failed_jobs."""

    def __init__(self, job_id: str, text: str) -> None:
        # failed_jobs.exception is "Class: message", a blank line, the traceback (worker/outcome.py);
        # the message may run over several lines.
        text = text or ""
        at = text.find("\n\nTraceback (most recent call last):")
        head, rest = (text[:at], text[at:]) if at >= 0 else text.partition("\n\n")[::2]
        self.exception_class, _, self.message = head.strip().partition(": ")
        self.traceback = rest.strip()
        self.text = text
        super().__init__(f"job {job_id} failed: {head.strip().splitlines()[0] if head.strip() else ''}")


class JobCancelled(FrameworkError):
    """wait(): the job was cancelled."""


class JobNotFound(FrameworkError):
    """wait(): no record of the job (never existed, or its record expired)."""


class ResultNotKept(FrameworkError):
    """wait() on a job whose keep_result is 0: no result would ever be stored."""


class ResultNotSerializable(FrameworkError):
    """wait(): the job completed, but its return value could not be kept."""


class WaitTimeout(TimeoutError):
    """wait(timeout) ran out; `state` is the last state seen."""

    def __init__(self, job_id: str, state: str, timeout: float) -> None:
        super().__init__(f"job {job_id} still {state} after {timeout:g}s")
        self.state = state


@dataclass(frozen=True)
class JobStatus:
    state: str
    queue: str | None = None
    job: str | None = None
    attempts: int = 0
    max_tries: int = 0
    dispatched_at: float | None = None
    available_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    progress: dict[str, Any] | None = None      # {"fraction": 0.4, "text": "parsing"}
    id: str = ""
    result: Any = None
    result_error: str | None = None
    keep_result: float = 0.0
    exception: str | None = None        # failed: the whole recorded exception text

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("exception")
        return data


def unknown(job_id: str) -> JobStatus:
    return JobStatus(state="unknown", id=job_id)


def from_payload(job_id: str, state: str, queue: str, raw: str, **fields: Any) -> JobStatus:
    """A queued job's status from its payload (read, not verified: this only displays it)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    options = body.get("options")
    options = options if isinstance(options, dict) else {}
    return JobStatus(state=state, queue=queue, job=body.get("job"), max_tries=int(body.get("maxTries") or 0),
                     dispatched_at=body.get("pushedAt"), id=job_id, keep_result=float(options.get("keepResult", 0)),
                     **fields)


def completed_record(payload: Any, attempts: int, value: Any) -> str:
    """The JSON a store keeps for a completed job (it adds finished_at); the value by the attribute
    JSON rules, else result_error (the job's work is done: an unkeepable value does not fail it)."""
    from core.payload import to_json_value

    record: dict[str, Any] = {"state": "completed", "job": payload.job, "queue": payload.queue, "attempts": attempts,
                              "max_tries": payload.max_tries, "dispatched_at": payload.pushed_at,
                              "keep_result": payload.keep_result}
    try:
        record["result"] = to_json_value(value, "result")
        text = json.dumps(record, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        record.pop("result", None)
        record["result_error"] = f"{type(value).__name__} cannot be kept: {exc}"
        text = json.dumps(record, separators=(",", ":"))
    return text


def ended_record(state: str, payload: Any, attempts: int) -> str:
    """The record of a job that ended without a result (settle.py): "cancelled" while it ran, or
    "skipped", deleted without success by delete(), Skip or a quiet expiry."""
    record: dict[str, Any] = {"state": state, "attempts": attempts}
    if payload is not None:
        record.update(job=payload.job, queue=payload.queue, max_tries=payload.max_tries,
                      dispatched_at=payload.pushed_at, keep_result=payload.keep_result)
    return json.dumps(record, separators=(",", ":"))


def parse_progress(text: str | None) -> dict[str, Any] | None:
    """A stored progress ("0.4 parsing") as status shows it."""
    if not text:
        return None
    fraction, _, words = text.partition(" ")
    return {"fraction": float(fraction), "text": words}


def from_record(job_id: str, record: str, finished_at: float | None = None) -> JobStatus:
    data = json.loads(record)
    from core.payload import from_json_value

    return JobStatus(state=data.get("state", "completed"), queue=data.get("queue"), job=data.get("job"),
                     attempts=int(data.get("attempts") or 0), max_tries=int(data.get("max_tries") or 0),
                     dispatched_at=data.get("dispatched_at"),
                     finished_at=data.get("finished_at", finished_at), id=job_id,
                     result=from_json_value(data.get("result")), result_error=data.get("result_error"),
                     keep_result=float(data.get("keep_result") or 0), last_error=data.get("last_error"))


def from_failed(failed: Any) -> JobStatus:
    """A failed_jobs row's status."""
    text = failed.exception or ""
    try:
        body = json.loads(failed.payload)
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    options = body.get("options")
    keep = options.get(KEEP_RESULT) if isinstance(options, dict) else None
    return JobStatus(state="failed", queue=failed.queue, job=failed.job_class, id=failed.uuid, attempts=failed.attempts,
                     max_tries=int(body.get("maxTries") or 0), dispatched_at=body.get("pushedAt"),
                     keep_result=float(keep) if isinstance(keep, (int, float)) and not isinstance(keep, bool) else 0.0,
                     finished_at=_timestamp(failed.failed_at), last_error=(text.splitlines() or [""])[0],
                     exception=text)


def _timestamp(value: Any) -> float | None:
    from datetime import datetime, timezone

    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


class JobRef(str):
    """The id of a dispatched job (a str: every caller that treats it as the uuid still works), and
    the way to ask about it: status(), wait(timeout), cancel()."""

    connection: str | None
    queue: str | None
    created: bool
    keep_result: float | None      # None: not known here (a ref rebuilt by job_ref)
    _inline: JobStatus | None

    def __new__(cls, job_id: str, connection: str | None = None, queue: str | None = None, *,
                created: bool = True, keep_result: float | None = None, inline: Any = None) -> "JobRef":
        ref = super().__new__(cls, job_id)
        ref.connection, ref.queue, ref.created, ref.keep_result = connection, queue, created, keep_result
        ref._inline = inline      # the sync connection: a JobStatus of the run that already happened
        return ref

    async def _conn(self) -> "QueueConnection":
        return await current().queue.connection(self.connection)

    async def status(self) -> JobStatus:
        if self._inline is not None:
            return self._inline
        conn = await self._conn()
        return await conn.job_status(self.queue, str(self)) or unknown(str(self))

    async def cancel(self) -> str:
        """Cancel the job: the state it ends in (`cancelled`; `reserved` while a running one is being
        stopped at its next await), or the final state it had already reached (nothing changed)."""
        if self._inline is not None:
            return self._inline.state
        return await (await self._conn()).cancel_job(self.queue, str(self))

    async def wait(self, timeout: float = 30) -> Any:
        """handle()'s return value once the job completed; never hangs (SPEC 11), so it takes no None."""
        if (timeout is None or isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not math.isfinite(timeout)):
            raise ValueError(f"wait() takes a timeout in seconds (it never waits for good), got {timeout!r}")
        if self.keep_result == 0 and self._inline is None:
            raise ResultNotKept(f"job {self} keeps no result (keep_result = 0); nothing to wait for")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, float(timeout))
        conn = None if self._inline is not None else await self._conn()
        pause = POLL_FIRST
        while True:
            status = await self.status()
            if status.state in FINAL or status.state == "unknown":
                return _outcome(str(self), status)
            if status.keep_result == 0 and status.state != "failed":
                raise ResultNotKept(f"job {self} keeps no result (keep_result = 0); nothing to wait for")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise WaitTimeout(str(self), status.state, timeout)
            await conn.await_change(status.queue or self.queue, str(self), min(pause, remaining))  # type: ignore[union-attr]
            pause = min(POLL_MAX, pause * 2)


def _outcome(job_id: str, status: JobStatus) -> Any:
    if status.state == "completed":
        if status.result_error:
            raise ResultNotSerializable(f"job {job_id} completed, but its result was not kept: {status.result_error}")
        if status.keep_result == 0:
            raise ResultNotKept(f"job {job_id} completed and keeps no result (keep_result = 0)")
        return status.result
    if status.state == "failed":
        raise JobFailed(job_id, status.exception or status.last_error or "")
    if status.state == "cancelled":
        raise JobCancelled(f"job {job_id} was cancelled")
    if status.state == "skipped":
        raise JobCancelled(f"job {job_id} was skipped (deleted without success)")
    raise JobNotFound(f"job {job_id} is unknown: it never existed, or its record expired")


def job_ref(job_id: str, connection: str | None = None, queue: str | None = None) -> JobRef:
    """A JobRef for a job id stored earlier (the queue is needed on Redis; without it every queue is looked in)."""
    return JobRef(str(job_id), connection, queue)
