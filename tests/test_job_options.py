"""SPEC 9 job settings: checked at dispatch with one line, frozen in the payload's signed options map
(only what differs from the defaults, so today's payloads stay byte for byte the same), decoded with
each key's type checked, and read by the worker through Payload's accessors."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from bootstrap.app import create_app
from core.job import Exponential, InvalidJobSetting, Job, SerializationError
from core.options import exception_matches
from core.payload import InvalidPayload, Payload, peek_uuid
from tests.jobs.middleware_jobs import SettingsJob
from tests.jobs.sample_jobs import RecordingJob

ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
# What the encoder wrote before the options map existed (main at 41189e7), for this very job.
BEFORE = ('{"data":{"log":"x","value":[1,2]},"displayName":"RecordingJob","job":"tests.jobs.sample_jobs.RecordingJob",'
          '"maxTries":3,"pushedAt":1795589709.5,"queue":"default","retryAfter":[0.0],"timeout":60.0,'
          f'"uuid":"{ID}","signature":"371142de7d80bc07ae468df65dca4299f7880a021406b1bb6c0ac97f70366635"}}')


@pytest.fixture
def fixed_id(monkeypatch):
    monkeypatch.setattr("core.job.new_id", lambda: ID)
    monkeypatch.setattr("core.job.now", lambda: 1795589709.5)


def test_a_job_on_the_defaults_encodes_exactly_as_before_the_options_map(fixed_id):
    payload = RecordingJob.make(log="x", value=[1, 2]).to_payload()
    assert payload.encode("secret") == BEFORE
    assert payload.options == {}


def test_an_old_payload_decodes_with_every_setting_at_its_default():
    payload = Payload.decode(BEFORE, "secret")
    assert (payload.retry_until, payload.max_exceptions, payload.max_releases, payload.expires_after,
            payload.expires_quietly, payload.dont_retry, payload.middleware, payload.backoff) == (
        None, None, 100, None, False, (), (), None)
    assert [payload.retry_delay(n) for n in (1, 2)] == [0.0, 0.0]


def test_every_setting_travels_in_the_signed_options_map():
    payload = SettingsJob.make(log="x").to_payload()
    assert payload.options == {"backoff": [5.0, 3.0, 600.0, 0.25], "retryUntil": 3600.0, "maxExceptions": 5,
                               "maxReleases": 7, "expiresAfter": 300.0, "expiresQuietly": True,
                               "dontRetry": ["builtins.ValueError", "builtins.KeyError"]}
    raw = payload.encode("secret")
    assert json.loads(raw)["options"] == payload.options and json.loads(raw)["retryAfter"] == []
    decoded = Payload.decode(raw, "secret")
    assert decoded == payload
    assert (decoded.retry_until, decoded.max_exceptions, decoded.max_releases, decoded.expires_after,
            decoded.expires_quietly, decoded.dont_retry) == (
        3600.0, 5, 7, 300.0, True, ("builtins.ValueError", "builtins.KeyError"))
    assert decoded.backoff == Exponential(5.0, 3.0, 600.0, 0.25)
    assert peek_uuid(raw) == payload.uuid             # the fast path still finds the id: options sorts before it
    forged = raw.replace('"maxReleases":7', '"maxReleases":700')
    with pytest.raises(InvalidPayload, match="signature is invalid"):
        Payload.decode(forged, "secret")


def test_changing_the_class_later_does_not_change_a_queued_job():
    raw = SettingsJob.make().to_payload().encode()
    SettingsJob.max_releases, SettingsJob.retry_after = 1, 0
    try:
        decoded = Payload.decode(raw)
    finally:
        SettingsJob.max_releases, SettingsJob.retry_after = 7, Exponential(first=5, factor=3, max=600, jitter=0.25)
    assert decoded.max_releases == 7 and decoded.backoff == Exponential(5.0, 3.0, 600.0, 0.25)


def test_settings_given_at_dispatch_win_and_only_differences_are_kept():
    payload = RecordingJob.make(max_releases=100, expires_quietly=False, dont_retry=(), retry_until=None,
                                expires_after=timedelta(minutes=2), max_exceptions=2).to_payload()
    assert payload.options == {"expiresAfter": 120.0, "maxExceptions": 2}
    assert "expires_after" not in payload.data and "max_exceptions" not in payload.data


def test_retry_until_as_a_datetime_becomes_seconds_from_the_dispatch():
    payload = RecordingJob.make(retry_until=datetime.now() + timedelta(hours=1)).to_payload()
    assert 3500 < payload.retry_until <= 3600
    assert RecordingJob.make(retry_until=timedelta(seconds=90)).to_payload().retry_until == 90.0


def test_exponential_backoff_delays_are_capped_and_jittered_within_their_fraction():
    assert [Exponential(1, 2, 8, 0).delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert Exponential(5).delay(10_000) == 3600           # past a float's range: the cap
    jittered = Exponential(10, 2, 600, 0.2)
    assert jittered.delay(2, rand=lambda: 0.0) == pytest.approx(16.0)
    assert jittered.delay(2, rand=lambda: 0.5) == pytest.approx(20.0)
    assert jittered.delay(2, rand=lambda: 0.999999) == pytest.approx(24.0, abs=1e-4)
    payload = RecordingJob.make(retry_after=jittered).to_payload()
    assert all(16.0 <= payload.retry_delay(2) <= 24.0 for _ in range(200))
    assert RecordingJob.make(retry_after=[5, 30]).to_payload().retry_delay(3) == 30.0    # a list: unchanged


def test_dont_retry_matches_an_exception_by_the_class_paths_of_its_mro():
    class DeviceGone(KeyError):
        pass

    paths = SettingsJob.make().to_payload().dont_retry
    assert exception_matches(ValueError("x"), paths)
    assert exception_matches(UnicodeDecodeError("a", b"", 0, 1, "r"), paths)      # a ValueError
    assert exception_matches(DeviceGone("7"), paths)                     # a subclass of KeyError
    assert not exception_matches(RuntimeError("x"), paths) and not exception_matches(ValueError("x"), ())
    local = RecordingJob.make(dont_retry=DeviceGone).to_payload()        # one class, not a tuple
    assert local.dont_retry == (f"{__name__}.test_dont_retry_matches_an_exception_by_the_class_paths_of_its_mro"
                                ".<locals>.DeviceGone",)
    assert exception_matches(DeviceGone(), Payload.decode(local.encode()).dont_retry)
    assert not exception_matches(KeyError(), local.dont_retry)


BAD = [
    ("retry_until", 0, "retry_until must be a number of seconds above 0, a timedelta, or None"),
    ("retry_until", -5, "retry_until must be a number of seconds above 0"),
    ("retry_until", "1h", "retry_until must be a number of seconds above 0"),
    ("retry_until", float("inf"), "retry_until must be a number of seconds above 0"),
    ("retry_until", datetime(2000, 1, 1), "retry_until must be in the future when given as a datetime"),
    ("retry_until", timedelta(0), "retry_until must be a number of seconds above 0"),
    ("max_exceptions", 0, "max_exceptions must be a whole number of at least 1, or None"),
    ("max_exceptions", 2.5, "max_exceptions must be a whole number of at least 1"),
    ("max_exceptions", True, "max_exceptions must be a whole number of at least 1"),
    ("max_releases", -1, "max_releases must be a whole number of at least 0, got -1"),
    ("max_releases", None, "max_releases must be a whole number of at least 0, got None"),
    ("max_releases", "5", "max_releases must be a whole number of at least 0"),
    ("expires_after", 0, "expires_after must be a number of seconds above 0, a timedelta, or None"),
    ("expires_after", float("nan"), "expires_after must be a number of seconds above 0"),
    ("expires_quietly", 1, "expires_quietly must be True or False, got 1"),
    ("expires_quietly", "yes", "expires_quietly must be True or False"),
    ("dont_retry", ("ValueError",), "dont_retry must be exception classes"),
    ("dont_retry", (int,), "dont_retry must be exception classes"),
    ("dont_retry", ValueError("x"), "dont_retry must be exception classes"),
    ("retry_after", Exponential(-1), "retry_after must be a usable Exponential (needs first >= 0"),
    ("retry_after", Exponential(5, factor=0.5), "retry_after must be a usable Exponential"),
    ("retry_after", Exponential(5, max=1), "retry_after must be a usable Exponential"),
    ("retry_after", Exponential(5, jitter=1), "retry_after must be a usable Exponential"),
    ("retry_after", Exponential(5, max=float("inf")), "retry_after must be a usable Exponential (needs finite"),
]


async def stored(app) -> int:
    sizes = await (await app.queue.connection()).sizes()
    return sum(s.pending + s.delayed for s in sizes.values())


@pytest.mark.parametrize("name, value, message", BAD)
async def test_a_bad_setting_is_one_line_at_dispatch_and_nothing_is_pushed(name, value, message):
    bad_class = type("BadJob", (RecordingJob,), {name: value})
    async with create_app() as app:
        with pytest.raises(InvalidJobSetting) as caught:
            await bad_class.dispatch(log="x")
        assert str(caught.value).startswith(f"BadJob.{message}") and str(caught.value).endswith("nothing was pushed")
        assert "\n" not in str(caught.value)
        with pytest.raises(InvalidJobSetting, match=rf"^RecordingJob\.{name} must be"):
            await RecordingJob.dispatch_many([{"log": "x"}, {"log": "y", name: value}])
        assert await stored(app) == 0


def test_the_new_settings_cannot_be_set_as_job_data_names():
    job = RecordingJob.make(log="x")
    job.max_releases = 3             # a setting on the instance, not an attribute of the job's data
    payload = job.to_payload()
    assert payload.max_releases == 3 and "max_releases" not in payload.data
    with pytest.raises(SerializationError, match="'middleware' cannot be set at dispatch"):
        RecordingJob.make(middleware=[])
    assert Job().middleware() == []


@pytest.mark.parametrize("options, fragment", [
    ([], "payload field 'options' must be a JSON object, got list"),
    (None, "payload field 'options' must be a JSON object, got NoneType"),
    ({"retryUntil": "60"}, "payload option 'retryUntil' must be seconds above 0, got str '60'"),
    ({"retryUntil": 0}, "payload option 'retryUntil' must be seconds above 0, got int 0"),
    ({"expiresAfter": True}, "payload option 'expiresAfter' must be seconds above 0, got bool True"),
    ({"maxExceptions": 0}, "payload option 'maxExceptions' must be a whole number of at least 1"),
    ({"maxReleases": 1.0}, "payload option 'maxReleases' must be a whole number of at least 0, got float 1.0"),
    ({"expiresQuietly": "yes"}, "payload option 'expiresQuietly' must be true"),
    ({"dontRetry": "builtins.ValueError"}, "payload option 'dontRetry' must be a list of class paths"),
    ({"dontRetry": ["x y"]}, "payload option 'dontRetry' must be a list of class paths"),
    ({"backoff": [1, 2, 3]}, "payload option 'backoff' must be [first, factor, max, jitter]"),
    ({"backoff": [1, 0.5, 3, 0]}, "payload option 'backoff' must be [first, factor, max, jitter]"),
    ({"middleware": [["a.B"]]}, "payload option 'middleware' must be a list of [class path, attributes] pairs"),
    ({"middleware": [["a.B", []]]}, "payload option 'middleware' must be a list of [class path, attributes]"),
    ({"runAs": "root"}, "payload option 'runAs' is unknown to this worker; the job was not run"),
])
def test_decoding_checks_each_option_key_and_its_type(options, fragment):
    body = json.loads(BEFORE)
    del body["signature"]
    body["options"] = options
    with pytest.raises(InvalidPayload) as caught:
        Payload.decode(json.dumps(body))
    assert str(caught.value) == fragment or str(caught.value).startswith(fragment)


def test_sequential_dispatch_pays_nothing_for_settings_it_does_not_use():
    """The options map is built only when a setting differs: a job on the defaults takes the same
    path through the encoder as before (checked by text above; here, no map is even made)."""
    payload = RecordingJob.make(log="x").to_payload()
    assert payload.options == {} and "options" not in payload.body()


def test_config_middleware_is_read_from_config_and_checked(monkeypatch):
    import config.queue
    from core.config import load_config
    from core.errors import ConfigError
    from tests.jobs.middleware_jobs import Tag

    tag = Tag("global")
    monkeypatch.setattr(config.queue, "middleware", [tag])
    assert load_config().queue.middleware == (tag,)
    monkeypatch.setattr(config.queue, "middleware", [tag, Tag])
    with pytest.raises(ConfigError, match=r"^config/queue.py middleware\[1\] is <class .*Tag'>, not a middleware"):
        load_config()
    monkeypatch.setattr(config.queue, "middleware", tag)
    with pytest.raises(ConfigError, match="^config/queue.py middleware must be a list, got Tag$"):
        load_config()


async def test_todays_worker_already_waits_an_exponential_backoff(tmp_path, caplog):
    """retry_after = Exponential(...) needs no new worker code: the worker asks Payload.retry_delay."""
    from core.worker import Worker, WorkerOptions
    from tests.jobs.middleware_jobs import BackoffJob

    async with create_app() as app:
        await BackoffJob.dispatch(log=str(tmp_path / "log"), succeed_on=9)
        with caplog.at_level("INFO"):
            await Worker(app, WorkerOptions(stop_when_empty=True, sleep=0.05)).run()
        sizes = (await (await app.queue.connection()).sizes(["default"]))["default"]
    assert (sizes.pending, sizes.delayed) == (0, 1)                  # released, not yet due
    assert [r.getMessage().rpartition("retry in ")[2] for r in caplog.records if "RETRY" in r.getMessage()] == ["40s"]
