"""A listeners module for tests: `APP_LISTENERS=tests.recording_listeners` points a worker or a
command at it instead of app/listeners.py.

Every event is appended as one JSON line to $EVENTS_LOG (its class as "event", its fields, the
pid and the time it was heard). EVENTS_MISBEHAVE adds a listener registered before the recorder:
"raise" raises on every event; "sleep" sleeps 10 s (twice the cut) on the first JobProcessing
this process hears, so later events wait for its cut while the jobs go on.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import time

from core.events import Event, JobProcessing, listen
from tests.jobs.sample_jobs import record

MISBEHAVE = os.environ.get("EVENTS_MISBEHAVE", "")
_slept = False

if MISBEHAVE == "raise":
    @listen(Event)
    async def broken(event: Event) -> None:
        raise RuntimeError(f"listener bug on {type(event).__name__}")

if MISBEHAVE == "sleep":
    @listen(JobProcessing)
    async def slow(event: JobProcessing) -> None:
        global _slept
        if not _slept:
            _slept = True
            await asyncio.sleep(10)


@listen(Event)
def recorder(event: Event) -> None:
    fields = dataclasses.asdict(event)
    record(os.environ.get("EVENTS_LOG") or os.devnull, event=type(event).__name__, pid=os.getpid(), heard=time.time(),
           **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()})
