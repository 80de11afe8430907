"""Router without a broker: patterns, subscriptions, handler arguments, groups, middleware, route:list."""
from __future__ import annotations

import pytest

from core.router import (PayloadError, Route, RouteError, Router, call_route, decode_payload, filter_covers,
                         load_routes)
from tests.conftest import run_cli


async def record(**kwargs):
    return kwargs


class Controller:
    @classmethod
    async def status(cls, device_id: str, payload: dict) -> tuple:
        return cls.__name__, device_id, payload

    @staticmethod
    async def reading(sensor_id: str, topic: str) -> tuple:
        return sensor_id, topic


async def route_call(router: Router, topic: str, raw: bytes = b"{}"):
    contexts = router.contexts_for(topic, raw)
    assert contexts, f"no route for {topic}"
    return [await call_route(c) for c in contexts] if len(contexts) > 1 else await call_route(contexts[0])


@pytest.mark.parametrize("pattern, topic_filter", [
    ("devices/{device_id}/status", "devices/+/status"),
    ("fleet/{truck_id}/#", "fleet/+/#"),
    ("a/+/{b}", "a/+/+"),
    ("plain/topic", "plain/topic"),
])
def test_pattern_becomes_mqtt_filter(pattern, topic_filter):
    route = Route(pattern, record)
    assert route.topic_filter == topic_filter
    assert route.subscription("workers") == topic_filter


def test_shared_route_subscribes_in_the_shared_group():
    route = Route("sensors/{sensor_id}/data", record, shared=True)
    assert route.subscription("workers") == "$share/workers/sensors/+/data"


@pytest.mark.parametrize("pattern, topic, params", [
    ("devices/{device_id}/status", "devices/d-1/status", {"device_id": "d-1"}),
    ("devices/{device_id}/status", "devices/d-1/state", None),
    ("devices/{device_id}/status", "devices/d-1/status/extra", None),
    ("devices/{device_id}/status", "devices/status", None),
    ("{kind}/{id}", "a/b", {"kind": "a", "id": "b"}),
    ("fleet/{truck_id}/#", "fleet/t7/gps/raw", {"truck_id": "t7"}),
    ("fleet/{truck_id}/#", "fleet/t7", {"truck_id": "t7"}),        # '#' includes the parent level
    ("fleet/#", "other/t7", None),
    ("a/+/c", "a/anything/c", {}),
])
def test_topic_matching_extracts_parameters(pattern, topic, params):
    assert Route(pattern, record).match(topic) == params


@pytest.mark.parametrize("pattern, message", [
    ("a/#/b", "'#' is only allowed as the last level"),
    ("a/{x}/{x}", "parameter {x} appears twice"),
    ("a/{payload}", "{payload} is reserved"),
    ("a/b{c}", "must be a name, {param}, '+' or '#'"),
    ("a/{}", "must be a name, {param}, '+' or '#'"),
    ("$share/g/a", "use shared=True"),
    ("", "non-empty topic"),
])
def test_bad_patterns_are_refused_when_defined(pattern, message):
    with pytest.raises(RouteError) as info:
        Route(pattern, record)
    assert message in str(info.value)


def test_handler_asking_for_unknown_argument_is_refused_when_defined():
    async def handler(device_id, colour):
        pass

    with pytest.raises(RouteError) as info:
        Route("devices/{device_id}", handler)
    assert "needs 'colour'" in str(info.value)


def test_sync_handler_is_refused_when_defined():
    def handler(payload):
        pass

    with pytest.raises(RouteError, match="must be an async function"):
        Route("devices/x", handler)


def test_bad_qos_is_refused():
    with pytest.raises(RouteError, match="qos must be 0, 1 or 2"):
        Route("a", record, qos=3)


async def test_handlers_get_only_what_they_declare():
    router = Router()
    router.on("devices/{device_id}/status", Controller.status)
    router.on("sensors/{sensor_id}/data", Controller.reading)

    assert await route_call(router, "devices/d1/status", b'{"t": 21.5}') == ("Controller", "d1", {"t": 21.5})
    assert await route_call(router, "sensors/s9/data", b"ignored") == ("s9", "sensors/s9/data")


async def test_handler_with_kwargs_gets_everything():
    router = Router()
    router.on("devices/{device_id}", record)
    got = await route_call(router, "devices/d1", b"[1, 2]")
    assert got["device_id"] == "d1" and got["payload"] == [1, 2] and got["topic"] == "devices/d1"
    assert got["client"] is None and got["context"].route.pattern == "devices/{device_id}"


@pytest.mark.parametrize("raw, payload", [
    (b'{"a": 1}', {"a": 1}), (b"[1, 2]", [1, 2]), (b"42", 42), (b"hello", "hello"), (b"", ""),
    (b"\xff\xfe", "\ufffd\ufffd"),
])
def test_payload_is_decoded_json_else_text(raw, payload):
    assert decode_payload(raw) == payload


async def test_payload_of_the_wrong_kind_is_refused_before_the_handler_runs():
    calls = []

    async def handler(payload: dict):
        calls.append(payload)

    router = Router()
    router.on("cmd", handler)
    with pytest.raises(PayloadError) as info:
        await route_call(router, "cmd", b"not json")
    assert str(info.value) == "expects a JSON object as payload, got text 'not json'"
    assert calls == []


async def test_every_matching_route_handles_the_message_in_definition_order():
    router = Router()

    async def specific():
        return "specific"

    async def catch_all():
        return "catch-all"

    router.on("devices/#", catch_all)
    router.on("devices/{id}/status", specific)
    assert await route_call(router, "devices/1/status") == ["catch-all", "specific"]
    assert await route_call(router, "devices/1/other") == "catch-all"
    assert router.contexts_for("elsewhere", b"") == []


def test_without_subscription_identifiers_narrower_filters_fold_into_wider_ones():
    router = Router()
    router.on("a/{x}/s", record, qos=1)
    router.on("a/#", record, qos=0)
    router.on("a/b/s", record, qos=2)
    router.on("a/+/s", record, qos=0, shared=True)
    router.on("a/b/s", record, qos=0, shared=True)
    router.on("c/+/d", record)
    router.on("c/e/+", record)          # overlaps c/+/d without covering it: both stay
    plan = router.subscription_plan("g", covering=True)
    assert [(s.topic_filter, s.qos, len(s.routes)) for s in plan] == [
        ("a/#", 2, 3), ("$share/g/a/+/s", 0, 2), ("c/+/d", 0, 1), ("c/e/+", 0, 1)]
    assert [s.identifier for s in plan] == [1, 2, 3, 4]
    every = router.subscription_plan("g")
    assert [s.topic_filter for s in every] == ["a/+/s", "a/#", "a/b/s", "$share/g/a/+/s", "$share/g/a/b/s",
                                                "c/+/d", "c/e/+"]


@pytest.mark.parametrize("wide, narrow, covers", [
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("a/+", "a/b", True), ("a/+", "a/+", True),
    ("a/+", "a/#", False), ("a/b", "a/+", False), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
    ("$share/g/a/#", "$share/g/a/b", True), ("$share/g/a/#", "$share/h/a/b", False), ("a/#", "$share/g/a/b", False),
    ("a/+/c", "a/b/+", False), ("a/+", "a/b/c", False),
])
def test_filter_covers(wide, narrow, covers):
    assert filter_covers(wide, narrow) is covers


def test_subscriptions_are_deduplicated_at_the_highest_qos():
    router = Router()
    router.on("a/{x}", record, qos=0)
    router.on("a/{y}", record, qos=2)
    router.on("b", record, qos=1, shared=True)
    assert router.subscriptions("grp") == [("a/+", 2), ("$share/grp/b", 1)]


async def test_group_prefix_and_middleware_order():
    seen = []

    def tag(name):
        async def middleware(context, next):
            seen.append(f"{name}>")
            result = await next(context)
            seen.append(f"<{name}")
            return result
        return middleware

    async def handler(truck_id):
        seen.append(f"handler {truck_id}")
        return "ok"

    router = Router()
    with router.group(prefix="fleet", middleware=[tag("outer")]) as fleet:
        with fleet.group(prefix="trucks", middleware=[tag("inner")]) as trucks:
            trucks.on("{truck_id}/gps", handler, middleware=[tag("route")])

    assert [r.pattern for r in router.routes] == ["fleet/trucks/{truck_id}/gps"]
    assert await route_call(router, "fleet/trucks/t1/gps") == "ok"
    assert seen == ["outer>", "inner>", "route>", "handler t1", "<route", "<inner", "<outer"]


async def test_middleware_that_does_not_call_next_stops_the_chain():
    seen = []

    async def gate(context, next):
        if context.payload.get("allowed"):
            context.state["user"] = "alice"
            return await next(context)
        seen.append(f"blocked {context.topic}")

    async def handler(context, payload):
        seen.append(f"handled {payload} for {context.state['user']}")

    router = Router()
    with router.group(middleware=[gate]) as group:
        group.on("cmd/{id}", handler)

    await route_call(router, "cmd/1", b'{"allowed": false}')
    await route_call(router, "cmd/2", b'{"allowed": true}')
    assert seen == ["blocked cmd/1", "handled {'allowed': True} for alice"]


async def test_routemq_style_middleware_objects_work():
    class Audit:
        def __init__(self):
            self.topics = []

        async def handle(self, context, next):
            self.topics.append(context.topic)
            return await next(context)

    audit = Audit()
    router = Router()
    router.on("x/{id}", record, middleware=[audit])
    await route_call(router, "x/1")
    assert audit.topics == ["x/1"]


def test_load_routes_merges_every_routes_file(tmp_path, monkeypatch):
    package = tmp_path / "myroutes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from core.router import Router\nfrom tests.test_router import record\n"
                                  "router = Router()\nrouter.on('a/{x}', record)\n")
    (package / "b.py").write_text("from core.router import Router\nfrom tests.test_router import record\n"
                                  "router = Router()\nrouter.on('b/{y}', record, shared=True)\n")
    (package / "helpers.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    router = load_routes(package, "myroutes")
    assert [r.pattern for r in router.routes] == ["a/{x}", "b/{y}"]


def test_a_broken_routes_file_is_one_clear_error(tmp_path, monkeypatch):
    package = tmp_path / "badroutes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mqtt.py").write_text("from core.router import Router\nrouter = Router()\n"
                                     "router.on('a/#/b', None)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RouteError, match="'#' is only allowed as the last level"):
        load_routes(package, "badroutes")


def test_route_list_prints_the_example_routes():
    result = run_cli("route:list", env={"MQTT_SHARED_GROUP": "workers"}, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["Pattern", "Subscription", "Handler", "QoS", "Shared"]
    rows = [line.split() for line in lines[2:]]
    assert ["devices/{device_id}/status", "devices/+/status", "DeviceController.status", "1", "no"] in rows
    assert ["sensors/{sensor_id}/data", "$share/workers/sensors/+/data", "DeviceController.data", "1", "yes"] in rows
    assert ["fleet/{truck_id}/gps", "fleet/+/gps", "DeviceController.gps", "0", "no"] in rows
