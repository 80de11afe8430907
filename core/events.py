"""Events (SPEC 10): one frozen dataclass per thing that happened, and the listeners that hear of it.

```python
# app/listeners.py   (discovered when the application boots)
from core.events import listen, JobFailed

@listen(JobFailed)
async def page_oncall(event: JobFailed) -> None: ...
```

Listeners run in the process where the event happens, awaited in registration order, each cut at
LISTENER_TIMEOUT seconds; one that raises or overruns is one log line and changes nothing. Events
are emitted after the state change they report is stored (JobProcessing: before the middleware),
at most once. Callers on a hot path ask `wants(EventClass)` before building an event, so an event
nobody listens to costs one dict lookup.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import FrameworkError, describe_exception

LISTENER_TIMEOUT = 5.0
LISTENERS_MODULE = "app.listeners"      # APP_LISTENERS names another (tests point it at theirs)
EVENT_BACKLOG = 10_000                  # events an Announcer keeps waiting for slow listeners; later ones are dropped
log = logging.getLogger("events")


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Every event; `listen(Event)` hears them all."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobEvent(Event):
    connection: str           # the connection's name: database, redis, sync
    queue: str
    job_id: str
    job_class: str            # the class path the payload names ("app.jobs.send_email_job.SendEmailJob")
    attempts: int             # attempts so far, this one included (0 before the first)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobQueued(JobEvent):
    """A dispatch's push is stored (on sync: the job ran)."""
    delay: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSkipped(JobEvent):
    """A dispatch pushed nothing: a unique job already held its key, or a debounce superseded it."""
    reason: str               # unique | debounce


@dataclass(frozen=True, kw_only=True, slots=True)
class JobProcessing(JobEvent):
    """An attempt starts, before its middleware."""


@dataclass(frozen=True, kw_only=True, slots=True)
class JobProcessed(JobEvent):
    """An attempt ended without a failure and is acknowledged."""
    duration: float
    outcome: str = "succeeded"          # or "skipped" when the job deleted itself


@dataclass(frozen=True, kw_only=True, slots=True)
class JobReleased(JobEvent):
    """The job is back on its queue, to run after `delay`."""
    duration: float
    reason: str                         # exception | release | middleware
    delay: float = 0.0
    exception: str | None = None        # first line, when reason is exception
    outcome: str = "released"           # "retried" when an exception caused it (a try was used)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobTimedOut(JobEvent):
    """An attempt ran past its timeout (a JobReleased or JobFailed follows)."""
    duration: float
    exception: str
    outcome: str = "timeout"


@dataclass(frozen=True, kw_only=True, slots=True)
class JobFailed(JobEvent):
    """A failed_jobs row was written: tries used up, fail(), a dead worker's job, a rejected payload."""
    exception: str
    duration: float | None = None
    outcome: str = "failed"


@dataclass(frozen=True, kw_only=True, slots=True)
class JobExpired(JobEvent):
    """The job was not started within expires_after of being due: recorded failed, or deleted quietly."""
    quietly: bool = False
    outcome: str = "expired"


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRetryRequested(JobEvent):
    """queue:retry put a failed job back on its queue."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerStarting(Event):
    connection: str
    queues: tuple[str, ...]
    concurrency: int = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerStopping(Event):
    connection: str
    queues: tuple[str, ...]
    reason: str               # signal, restart, max-jobs, memory, empty, ...
    status: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueBusy(Event):
    """queue:monitor found a queue over its limits."""
    connection: str
    queue: str
    size: int
    oldest_wait: float | None = None    # seconds the oldest pending job has waited


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFinished(Event):
    batch_id: str
    name: str
    total: int
    failed: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchCancelled(Event):
    batch_id: str
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ScheduledJobDispatched(Event):
    schedule: str             # the scheduled event's name
    tick: float               # the tick's time, seconds since the epoch
    connection: str
    queue: str
    job_id: str
    job_class: str


Listener = Callable[[Any], Awaitable[None] | None]
_F = TypeVar("_F", bound=Listener)
_listeners: dict[type, list[Listener]] = {}
_discovered = False


def listen(*event_classes: type[Event]) -> Callable[[_F], _F]:
    """`@listen(JobFailed)` (or several classes; a base class such as JobEvent hears its subclasses)."""
    if not event_classes or not all(isinstance(c, type) and issubclass(c, Event) for c in event_classes):
        raise FrameworkError(f"listen() takes event classes from core.events, got {event_classes!r}")

    def register(listener: _F) -> _F:
        if not callable(listener):
            raise FrameworkError(f"listen(): {listener!r} is not callable")
        targets = dict.fromkeys(t for c in event_classes for t in (c, *_subclasses(c)))
        for target in targets:      # once per class, however many of the given classes cover it
            heard = _listeners.setdefault(target, [])
            if listener not in heard:
                heard.append(listener)
        return listener

    return register


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    sub: type
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def forget(listener: Listener) -> None:
    """Unregister a listener from every event class."""
    for event_class in list(_listeners):
        _listeners[event_class] = [f for f in _listeners[event_class] if f is not listener]
        if not _listeners[event_class]:
            del _listeners[event_class]


def listening() -> Mapping[type, list[Listener]]:
    """The live map of the event classes someone listens for (listeners discovered first): a hot path
    keeps it and asks `cls in it`, as wants() does, without a call per event."""
    if not _discovered:
        discover(_configured_module())
    return _listeners


def wants(event_class: type[Event]) -> bool:
    """Whether anyone listens for this class: ask before building an event on a hot path."""
    if not _discovered:
        discover(_configured_module())
    return event_class in _listeners


def _configured_module() -> str | None:
    """APP_LISTENERS of the application already booted, if any (a lazily booted script's is read by discover)."""
    from core.context import current_or_none

    app = current_or_none()
    return (app.config.app.listeners or None) if app is not None else None


async def emit(event: Event) -> None:
    """Await each listener of the event's class in registration order; never raises for them."""
    for listener in _listeners.get(type(event), []).copy():
        await _call(listener, event)


async def _call(listener: Listener, event: Event) -> None:
    cut = asyncio.timeout(LISTENER_TIMEOUT)
    try:
        async with cut:
            result = listener(event)
            if inspect.isawaitable(result):
                await result
    except TimeoutError as exc:
        if cut.expired():
            log.warning("listener %s of %s overran %gs and was cut", _name(listener), type(event).__name__,
                        LISTENER_TIMEOUT)
        else:
            _report(listener, event, exc)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():     # the caller itself is being cancelled: not the listener's
            raise
        _report(listener, event, exc)
    except BaseException as exc:  # noqa: BLE001 - sys.exit() in a listener too: one line, never the outcome
        _report(listener, event, exc)


def _report(listener: Listener, event: Event, exc: BaseException) -> None:
    log.warning("listener %s of %s raised %s", _name(listener), type(event).__name__, describe_exception(exc))


def _name(listener: Listener) -> str:
    return getattr(listener, "__qualname__", None) or repr(listener)


def discover(module: str | None = None) -> None:
    """Import app/listeners.py (if there is one), whose @listen decorators register its listeners.
    Called when the application boots, and by the first wants() of a lazily booted process.
    `module` is APP_LISTENERS when set: then it must exist (a typo would silence every listener)."""
    global _discovered
    named = module
    module = module or LISTENERS_MODULE
    try:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
        elif named:
            raise FrameworkError(f"APP_LISTENERS names {module}, which cannot be found")
    except FrameworkError:
        raise
    except Exception as exc:     # tried again next time: each boot says what is wrong until it is fixed
        raise FrameworkError(f"Cannot load {module.replace('.', '/')}.py: {describe_exception(exc)}") from exc
    _discovered = True


class Announcer:
    """Hands events to their listeners from a task of its own, one event after another, in the
    order they were announced.

    For a process that must not wait for its listeners (a worker): announce() returns at once, so a
    slow listener holds no job slot, no acknowledgement and no pass of the loop; it delays only the
    listeners of later events, each still cut at LISTENER_TIMEOUT. The backlog is bounded: past
    EVENT_BACKLOG waiting events new ones are dropped (events are at most once), with one log line.
    """

    def __init__(self, backlog: int = EVENT_BACKLOG) -> None:
        self._backlog = backlog
        self._pending: deque[tuple[Event, asyncio.Future[None] | None]] = deque()
        self._task: asyncio.Task | None = None
        self._dropped = 0

    def announce(self, event: Event) -> None:
        self._enqueue(event, None)

    async def announce_and_wait(self, event: Event) -> None:
        """Announce, then wait until its listeners have heard it: for an event that must be heard before
        what it announces begins (JobProcessing, before the middleware). Bounded by its listeners' cuts
        (and one more for an event still being heard before it); past that it is still heard, later."""
        heard = asyncio.get_running_loop().create_future()
        if self._enqueue(event, heard):
            patience = (len(_listeners.get(type(event), ())) + 1) * LISTENER_TIMEOUT + 1
            await asyncio.wait([heard], timeout=patience)

    def _enqueue(self, event: Event, heard: asyncio.Future[None] | None) -> bool:
        if len(self._pending) >= self._backlog:
            if not self._dropped:
                log.warning("%d events wait for slow listeners; dropping new ones until they catch up", self._backlog)
            self._dropped += 1
            return False
        self._pending.append((event, heard))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._deliver())
        return True

    async def _deliver(self) -> None:
        try:
            while self._pending:
                event, heard = self._pending.popleft()
                try:
                    await emit(event)
                finally:
                    if heard is not None and not heard.done():
                        heard.set_result(None)
            if self._dropped:
                log.warning("listeners caught up; %d event(s) were dropped meanwhile", self._dropped)
                self._dropped = 0
        finally:
            self._task = None

    async def close(self, grace: float) -> None:
        """Wait up to `grace` seconds for the events announced so far to be heard; drop the rest (one line)."""
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=grace)
        if done:
            return
        unheard = len(self._pending) + 1      # the one being heard, and those after it
        self._pending.clear()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        log.warning("%d event(s) not heard: listeners were still busy %gs after the worker stopped", unheard, grace)
