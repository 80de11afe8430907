"""Router, Route, groups and middleware: which handler a topic reaches, and with what arguments."""
from __future__ import annotations

import importlib
import inspect
import json
import re
import typing
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.errors import FrameworkError
from core.pipeline import run_pipeline

_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
# Names a handler may declare besides its route parameters.
INJECTED = ("payload", "topic", "client", "context")


class RouteError(FrameworkError):
    """A route definition that cannot work: a bad pattern, or a handler asking for what no message has."""


class PayloadError(FrameworkError):
    """A message whose payload the route's handler declares it cannot take."""


class Publisher(Protocol):
    async def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False) -> None: ...


@dataclass
class MessageContext:
    """What middleware and handlers see of one message; middleware may add to `state`."""

    topic: str
    payload: Any
    params: dict[str, str]
    route: "Route"
    client: Publisher | None = None
    raw: bytes = b""
    qos: int = 0
    retain: bool = False
    state: dict[str, Any] = field(default_factory=dict)
    properties: Any = None          # MQTT 5: the PUBLISH properties (ResponseTopic, CorrelationData, ...)


Next = Callable[[MessageContext], Awaitable[Any]]
Middleware = Callable[[MessageContext, Next], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    pattern: str
    handler: Callable[..., Awaitable[Any]]
    qos: int = 0
    shared: bool = False
    middleware: tuple[Middleware, ...] = ()
    segments: tuple[str, ...] = field(init=False, repr=False, compare=False)
    params: tuple[str, ...] = field(init=False, repr=False, compare=False)
    spec: "HandlerSpec" = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        segments, params = compile_pattern(self.pattern)
        object.__setattr__(self, "segments", segments)
        object.__setattr__(self, "params", params)
        if self.qos not in (0, 1, 2):
            raise RouteError(f"route {self.pattern!r}: qos must be 0, 1 or 2, got {self.qos!r}")
        object.__setattr__(self, "spec", inspect_handler(self))

    @property
    def topic_filter(self) -> str:
        """The MQTT filter: `{name}` levels become `+`."""
        return "/".join("+" if _PARAM.match(s) else s for s in self.segments)

    def subscription(self, shared_group: str) -> str:
        return f"$share/{shared_group}/{self.topic_filter}" if self.shared else self.topic_filter

    @property
    def handler_name(self) -> str:
        return getattr(self.handler, "__qualname__", None) or repr(self.handler)

    def match(self, topic: str) -> dict[str, str] | None:
        """The route parameters when `topic` is one this route handles, else None."""
        return self.match_levels(topic.split("/"))

    def match_levels(self, levels: list[str]) -> dict[str, str] | None:
        params: dict[str, str] = {}
        for i, segment in enumerate(self.segments):
            if segment == "#":
                # `a/#` also matches `a` itself, as MQTT's filter does.
                return params
            if i >= len(levels):
                return None
            name = _PARAM.match(segment)
            if name:
                params[name.group(1)] = levels[i]
            elif segment != "+" and segment != levels[i]:
                return None
        return params if len(levels) == len(self.segments) else None


def compile_pattern(pattern: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(pattern, str) or not pattern:
        raise RouteError(f"route pattern must be a non-empty topic, got {pattern!r}")
    if pattern.startswith("$share/"):
        raise RouteError(f"route {pattern!r}: use shared=True instead of writing $share/ in the pattern")
    segments = tuple(pattern.split("/"))
    params: list[str] = []
    for i, segment in enumerate(segments):
        name = _PARAM.match(segment)
        if name:
            if name.group(1) in params:
                raise RouteError(f"route {pattern!r}: parameter {{{name.group(1)}}} appears twice")
            if name.group(1) in INJECTED:
                raise RouteError(f"route {pattern!r}: {{{name.group(1)}}} is reserved; name the parameter otherwise")
            params.append(name.group(1))
        elif segment == "#" and i != len(segments) - 1:
            raise RouteError(f"route {pattern!r}: '#' is only allowed as the last level")
        elif any(c in segment for c in "{}") or (segment not in ("+", "#") and any(c in segment for c in "+#")):
            raise RouteError(f"route {pattern!r}: level {segment!r} must be a name, {{param}}, '+' or '#'")
    return segments, tuple(params)


@dataclass(frozen=True)
class HandlerSpec:
    """What a handler declares, read once at definition time rather than at every message."""

    names: tuple[str, ...]
    takes_all: bool                 # declares **kwargs: gets every offered name
    payload_type: type | None       # `payload: dict` etc.: other payloads are refused before the call


_PAYLOAD_TYPES = {dict: "a JSON object", list: "a JSON array", str: "text", int: "a whole number",
                  float: "a number", bool: "true or false"}


def inspect_handler(route: Route) -> HandlerSpec:
    """Refuse a handler that could never be called when the route is defined, not at each message."""
    handler = route.handler
    if not callable(handler):
        raise RouteError(f"route {route.pattern!r}: handler {handler!r} is not callable")
    # getattr, not callable(): it is the __call__ method itself that must be async (callable() was checked above)
    if not (inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(getattr(handler, "__call__", None))):  # noqa: B004
        raise RouteError(f"route {route.pattern!r}: handler {route.handler_name} must be an async function")
    available = set(route.params) | set(INJECTED)
    names, takes_all = [], False
    for p in inspect.signature(handler).parameters.values():
        if p.kind == p.VAR_KEYWORD:
            takes_all = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name in available:
            names.append(p.name)
        elif p.kind != p.VAR_POSITIONAL and p.default is p.empty:
            raise RouteError(f"route {route.pattern!r}: handler {route.handler_name} needs {p.name!r}, which is "
                             f"neither a route parameter nor one of {', '.join(INJECTED)}")
    return HandlerSpec(tuple(names), takes_all, _payload_annotation(handler))


def _payload_annotation(handler: Callable[..., Any]) -> type | None:
    try:
        hint = typing.get_type_hints(handler).get("payload")
    except Exception:  # an annotation that cannot be resolved is only documentation
        return None
    hint = typing.get_origin(hint) or hint
    return hint if hint in _PAYLOAD_TYPES else None


def handler_arguments(route: Route, context: MessageContext) -> dict[str, Any]:
    offered = {**context.params, "payload": context.payload, "topic": context.topic,
               "client": context.client, "context": context}
    spec = route.spec
    expected = spec.payload_type
    # bool is an int in Python, but `true` is not a count.
    if expected is not None and "payload" in spec.names and (
            not isinstance(context.payload, expected) or (expected is not bool and isinstance(context.payload, bool))):
        raise PayloadError(f"expects {_PAYLOAD_TYPES[expected]} as payload, got {describe_payload(context.payload)}")
    if spec.takes_all:
        return offered
    return {name: offered[name] for name in spec.names}


def describe_payload(payload: Any) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    kind = "text" if isinstance(payload, str) else type(payload).__name__
    return f"{kind} {text[:60]!r}" + ("..." if len(text) > 60 else "")


async def call_route(context: MessageContext) -> Any:
    """Run the route's middleware, outermost first, then its handler (core/pipeline.py, as for jobs);
    a middleware that does not call `next` stops the chain there."""
    route = context.route

    async def handler(ctx: MessageContext) -> Any:
        return await route.handler(**handler_arguments(route, ctx))

    return await run_pipeline(route.middleware, context, handler)


def decode_payload(raw: bytes | bytearray | str | None) -> Any:
    """Decoded JSON when the message is JSON, else the text."""
    if raw is None:
        return ""
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):   # RecursionError: nested deeper than Python can read
        return text


class RouteGroup:
    """Routes registered through a group share its topic prefix and middleware."""

    def __init__(self, router: "Router", prefix: str = "", middleware: Sequence[Middleware] = ()) -> None:
        self.router = router
        self.prefix = prefix.strip("/")
        self.middleware = tuple(middleware)

    def on(self, pattern: str, handler: Callable[..., Awaitable[Any]], qos: int = 0, shared: bool = False,
           middleware: Sequence[Middleware] = ()) -> Route:
        full = f"{self.prefix}/{pattern}" if self.prefix else pattern
        return self.router.on(full, handler, qos=qos, shared=shared, middleware=(*self.middleware, *middleware))

    @contextmanager
    def group(self, prefix: str = "", middleware: Sequence[Middleware] = ()) -> Iterator["RouteGroup"]:
        joined = "/".join(p for p in (self.prefix, prefix.strip("/")) if p)
        yield RouteGroup(self.router, joined, (*self.middleware, *middleware))


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def on(self, pattern: str, handler: Callable[..., Awaitable[Any]], qos: int = 0, shared: bool = False,
           middleware: Sequence[Middleware] = ()) -> Route:
        route = Route(pattern, handler, qos=qos, shared=shared, middleware=tuple(middleware))
        self.routes.append(route)
        return route

    @contextmanager
    def group(self, prefix: str = "", middleware: Sequence[Middleware] = ()) -> Iterator[RouteGroup]:
        yield RouteGroup(self, prefix, middleware)

    def include(self, other: "Router") -> None:
        self.routes.extend(other.routes)

    def matches(self, topic: str, routes: Iterable[Route] | None = None) -> list[tuple[Route, dict[str, str]]]:
        """Every route (of `routes`, else all), in definition order, that handles `topic`, with its parameters."""
        levels = topic.split("/")
        found = []
        for route in self.routes if routes is None else routes:
            params = route.match_levels(levels)
            if params is not None:
                found.append((route, params))
        return found

    def subscriptions(self, shared_group: str) -> list[tuple[str, int]]:
        """One (filter, qos) per distinct subscription, at the highest qos any of its routes asks for."""
        return [(s.topic_filter, s.qos) for s in self.subscription_plan(shared_group)]

    def subscription_plan(self, shared_group: str, covering: bool = False) -> list["Subscription"]:
        """The SUBSCRIBEs the app sends, numbered from 1 (their MQTT 5 subscription identifiers).

        covering=True leaves out a filter that another of the same kind covers (`a/+/s` under `a/#`),
        its routes and qos folded into the wider one: without subscription identifiers (MQTT 3.1.1)
        the app cannot tell which subscription a copy came through, so it asks for each message once."""
        wanted: dict[str, list[Route]] = {}
        for route in self.routes:
            wanted.setdefault(route.subscription(shared_group), []).append(route)
        if covering:
            for narrow in list(wanted):
                wide = next((w for w in wanted if w != narrow and filter_covers(w, narrow)
                             and not any(filter_covers(o, w) for o in wanted if o != w)), None)
                if wide is not None:
                    wanted[wide] += wanted.pop(narrow)
        return [Subscription(f, max(r.qos for r in routes), n, tuple(routes))
                for n, (f, routes) in enumerate(wanted.items(), 1)]

    def contexts_for(self, topic: str, raw: bytes, routes: Iterable[Route] | None = None,
                     client: Publisher | None = None, qos: int = 0, retain: bool = False,
                     properties: Any = None) -> list[MessageContext]:
        """One context per route that handles the message (of `routes`, else all); none when no route does.
        The payload is decoded once; each handler gets its own context (and middleware state)."""
        found = self.matches(topic, routes)
        if not found:
            return []
        payload, raw = decode_payload(raw), bytes(raw)
        return [MessageContext(topic=topic, payload=payload, params=params, route=route, client=client, raw=raw,
                               qos=qos, retain=retain, properties=properties) for route, params in found]


@dataclass(frozen=True)
class Subscription:
    """One SUBSCRIBE: its filter (`$share/<group>/...` for shared routes), the highest qos its routes ask
    for, its MQTT 5 subscription identifier, and the routes a copy delivered through it may reach."""
    topic_filter: str
    qos: int
    identifier: int
    routes: tuple[Route, ...]


def filter_covers(wide: str, narrow: str) -> bool:
    """Whether every topic `narrow` matches is matched by `wide` (both plain filters, or both shared in
    one group: `$share/g/a/#` covers `$share/g/a/b`, never `a/b`)."""
    w, n = wide.split("/"), narrow.split("/")
    if (w[0] == "$share") != (n[0] == "$share"):
        return False
    if w[0] == "$share":
        if w[:2] != n[:2]:
            return False
        w, n = w[2:], n[2:]
    for i, level in enumerate(w):
        if level == "#":
            # a wildcard first level matches no `$SYS/...` topic
            return not (i == 0 and n[0].startswith("$"))
        if i >= len(n) or n[i] == "#":
            return False
        if level == "+":
            if n[i].startswith("$") and i == 0:
                return False
        elif level != n[i]:
            return False
    return len(w) == len(n)


def load_routes(directory: Path, package: str = "routes") -> Router:
    """One router holding the routes of every `<directory>/*.py` that defines `router = Router()`."""
    merged = Router()
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{package}.{path.stem}")
        except FrameworkError:
            raise
        except Exception as exc:
            raise FrameworkError(f"Cannot load {directory.name}/{path.name}: {type(exc).__name__}: {exc}") from exc
        router = getattr(module, "router", None)
        if isinstance(router, Router):
            merged.include(router)
    return merged
