"""Settings are checked where they are given (SPEC 5): at dispatch for a job's max_tries, timeout and
retry_after, at startup for QUEUE_* variables; a bad one pushes nothing, with one clear line."""
from __future__ import annotations


import pytest

from bootstrap.app import create_app
from core.config import load_config
from core.errors import ConfigError
from core.job import InvalidJobSetting, Job, SerializationError
from core.payload import InvalidPayload, Payload
from tests.conftest import run_cli
from tests.jobs.sample_jobs import RecordingJob

BAD = [("max_tries", 0), ("max_tries", -1), ("max_tries", 1.5), ("max_tries", True), ("max_tries", "3"),
       ("timeout", 0), ("timeout", -1), ("timeout", float("inf")), ("timeout", float("nan")), ("timeout", "5"),
       ("retry_after", -1), ("retry_after", float("inf")), ("retry_after", [1, -2]), ("retry_after", [1, float("nan")]),
       ("retry_after", "x")]


async def stored(app) -> int:
    sizes = await (await app.queue.connection()).sizes()
    return sum(s.pending + s.delayed for s in sizes.values())


@pytest.mark.parametrize("name, value", BAD)
async def test_a_bad_setting_on_the_class_or_the_instance_is_refused_at_dispatch(name, value):
    bad_class = type("BadSettingJob", (RecordingJob,), {name: value})
    async with create_app() as app:
        with pytest.raises(InvalidJobSetting, match=rf"^BadSettingJob\.{name} must be .*nothing was pushed"):
            await bad_class.dispatch(log="x")
        with pytest.raises(InvalidJobSetting, match=rf"^RecordingJob\.{name} must be"):
            await RecordingJob.dispatch(log="x", **{name: value})
        with pytest.raises(InvalidJobSetting, match=rf"^RecordingJob\.{name} must be"):
            await RecordingJob.dispatch_many([{"log": "x"}, {"log": "y", name: value}])
        assert await stored(app) == 0


async def test_good_settings_still_travel():
    async with create_app():
        payload = RecordingJob.make(max_tries=1, timeout=0.5, retry_after=[0, 2.5]).to_payload()
    assert (payload.max_tries, payload.timeout, payload.retry_after) == (1, 0.5, (0.0, 2.5))


@pytest.mark.parametrize("variable, value, fragment", [
    ("QUEUE_VISIBILITY_TIMEOUT", "0", "at least 1, got 0"),
    ("QUEUE_VISIBILITY_TIMEOUT", "-5", "at least 1, got -5"),
    ("QUEUE_VISIBILITY_TIMEOUT", "1.5", "whole number"),
    ("QUEUE_REPLAY_WINDOW", "59", "at least 60, got 59"),
    ("QUEUE_REPLAY_WINDOW", "-1", "at least 60"),
    ("QUEUE_REPLAY_WINDOW", "soon", "whole number"),
    ("QUEUE_DISPATCH_TIMEOUT", "-1", "0 (no retry) or more"),
    ("QUEUE_DISPATCH_TIMEOUT", "inf", "finite"),
    ("QUEUE_DISPATCH_TIMEOUT", "nan", "finite"),
])
def test_a_bad_queue_variable_is_one_clear_line(monkeypatch, variable, value, fragment):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable) as caught:
        load_config()
    assert fragment in str(caught.value)


@pytest.mark.parametrize("command", [["queue:size"], ["queue:work", "--stop-when-empty"], ["queue:restart"]])
def test_every_command_refuses_a_bad_visibility_timeout(command):
    result = run_cli(*command, env={"QUEUE_VISIBILITY_TIMEOUT": "0"}, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "QUEUE_VISIBILITY_TIMEOUT must be a whole number of seconds of at least 1, got 0"]


class ShadowJob(Job):
    def __init__(self) -> None:
        super().__init__()
        self.note = ""

    @property
    def label(self) -> str:
        return self.note

    async def handle(self) -> None:
        pass


@pytest.mark.parametrize("name", ["handle", "failed", "dispatch", "make", "run_handle", "to_payload", "label",
                                  "job_id", "attempts", "_private"])
async def test_an_attribute_hiding_a_method_or_the_framework_is_refused(name):
    async with create_app() as app:
        with pytest.raises(SerializationError, match=rf"ShadowJob: '{name}' cannot be set at dispatch"):
            await ShadowJob.dispatch(note="x", **{name: "oops"})
        job = ShadowJob()
        if not name.startswith("_") and name not in ("job_id", "attempts", "label", "to_payload"):
            setattr(job, name, "oops")       # an instance built by hand
            with pytest.raises(SerializationError, match=rf"ShadowJob: '{name}' cannot be dispatched"):
                job.to_payload()
        assert await stored(app) == 0


async def test_a_private_name_at_dispatch_is_refused_as_private():
    with pytest.raises(SerializationError, match=r"'_note' cannot be set at dispatch: it is private"):
        ShadowJob.dispatch(_note="x")


def test_a_payload_naming_a_method_is_not_restored():
    payload = Payload(uuid="u-1", job=ShadowJob.class_path(), queue="default", max_tries=1, timeout=1.0,
                      retry_after=(0.0,), data={"note": "x", "handle": "oops"})
    with pytest.raises(InvalidPayload, match="'handle' of ShadowJob cannot be restored"):
        ShadowJob.from_payload(payload, attempts=1)
    assert ShadowJob.make(note="x", queue="high", max_tries=2, connection="sync").note == "x"
