"""core/pipeline.py: the one middleware chain jobs and MQTT routes share."""
from __future__ import annotations

import pytest

from core.pipeline import run_pipeline
from tests.jobs.middleware_jobs import Tag
from tests.jobs.sample_jobs import read_events


def tag(seen: list, name: str):
    async def middleware(subject, next):
        seen.append(f"{name}>")
        result = await next(subject)
        seen.append(f"<{name}")
        return result
    return middleware


async def test_middleware_run_outermost_first_around_the_final_call():
    seen: list[str] = []

    async def final(subject):
        seen.append(f"final {subject}")
        return "result"

    assert await run_pipeline([tag(seen, "a"), tag(seen, "b"), tag(seen, "c")], "job", final) == "result"
    assert seen == ["a>", "b>", "c>", "final job", "<c", "<b", "<a"]


async def test_no_middleware_is_just_the_final_call():
    async def final(subject):
        return subject * 2

    assert await run_pipeline([], 21, final) == 42


async def test_a_middleware_that_does_not_call_next_stops_the_chain_with_its_own_result():
    seen: list[str] = []

    async def gate(subject, next):
        return "stopped"

    async def final(subject):
        seen.append("final")

    assert await run_pipeline([tag(seen, "a"), gate, tag(seen, "b")], "job", final) == "stopped"
    assert seen == ["a>", "<a"]


async def test_next_passes_on_what_it_is_given_or_else_the_same_subject():
    async def swap(subject, next):
        return await next(subject + "+swapped")

    async def same(subject, next):
        return await next()

    async def final(subject):
        return subject

    assert await run_pipeline([swap, same], "job", final) == "job+swapped"


async def test_objects_with_call_or_with_handle_both_work(tmp_path):
    log = str(tmp_path / "events")

    class RouteMqStyle:
        def __init__(self):
            self.seen = []

        async def handle(self, subject, next):
            self.seen.append(subject)
            return await next(subject)

    routemq = RouteMqStyle()

    async def final(subject):
        return "done"

    assert await run_pipeline([Tag("job-style", log), routemq], "x", final) == "done"
    assert [e["event"] for e in read_events(log)] == ["job-style>", "<job-style"] and routemq.seen == ["x"]


async def test_an_exception_unwinds_through_every_middleware():
    seen: list[str] = []

    async def guard(subject, next):
        try:
            return await next(subject)
        except ValueError as exc:
            seen.append(f"guard saw {exc}")
            raise

    async def final(subject):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await run_pipeline([guard, tag(seen, "inner")], "job", final)
    assert seen == ["inner>", "guard saw boom"]
