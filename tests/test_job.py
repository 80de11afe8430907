"""The Job class and its payload: what survives the trip, what is refused, what is frozen."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import uuid

import pytest

from core.errors import InvalidQueueName
from core.job import Job, SerializationError, resolve_job_class
from core.payload import IDS_PER_DRAW, InvalidPayload, Payload, new_id, peek_uuid


class ExampleJob(Job):
    max_tries = 4
    timeout = 12
    retry_after = [5, 30]
    queue = "emails"

    def __init__(self) -> None:
        super().__init__()
        self.to = None
        self.items = []
        self._private = "not sent"


def test_defaults_match_the_spec():
    assert (Job.max_tries, Job.timeout, Job.retry_after, Job.queue) == (3, 60, 0, "default")


def test_public_attributes_round_trip_with_their_types():
    job = ExampleJob.make(to="a@example.com", items=[1, 2.5, None, True, {"k": ["v", (1, 2)]}],
                          point=(1, 2), nested={"a": {"b": [1, {"c": "d"}]}})
    payload = job.to_payload()
    restored = ExampleJob.from_payload(Payload.decode(payload.encode()), attempts=2)
    assert restored.to == "a@example.com"
    assert restored.items == [1, 2.5, None, True, {"k": ["v", (1, 2)]}]
    assert restored.point == (1, 2) and isinstance(restored.point, tuple)
    assert restored.nested == {"a": {"b": [1, {"c": "d"}]}}
    assert restored.attempts == 2 and restored.job_id == payload.uuid
    assert restored._private == "not sent"  # set by __init__, never from the payload
    assert "_private" not in payload.data and "job_id" not in payload.data and "attempts" not in payload.data


def test_payload_freezes_class_settings_at_dispatch():
    payload = ExampleJob.make(to="x").to_payload()
    ExampleJob.max_tries, ExampleJob.timeout = 9, 99
    try:
        decoded = Payload.decode(payload.encode())
    finally:
        ExampleJob.max_tries, ExampleJob.timeout = 4, 12
    assert (decoded.max_tries, decoded.timeout, decoded.retry_after, decoded.queue) == (4, 12.0, (5.0, 30.0), "emails")


def test_retry_after_list_gives_one_delay_per_retry_and_the_last_repeats():
    payload = ExampleJob.make().to_payload()
    assert [payload.retry_delay(n) for n in (1, 2, 3, 4)] == [5, 30, 30, 30]


@pytest.mark.parametrize("value, fragment", [
    (object(), "object"),
    ({1: "int key"}, "key of type int"),
    (float("nan"), "nan"),
    ([1, {"deep": {1, 2}}], "set"),
])
def test_unserializable_values_name_class_and_attribute(value, fragment):
    with pytest.raises(SerializationError) as err:
        ExampleJob.make(to="x", items=value).to_payload()
    assert "ExampleJob.items" in str(err.value) and fragment in str(err.value)


def test_a_socket_is_refused():
    with socket.socket() as s, pytest.raises(SerializationError, match="ExampleJob.conn"):
        ExampleJob.make(conn=s).to_payload()


@pytest.mark.parametrize("name", ["high", "emails.v2", "tenant:42", "a-b_c", "x" * 100])
def test_valid_queue_names(name):
    assert ExampleJob.make().to_payload(queue=name).queue == name


@pytest.mark.parametrize("name", ["", "has space", "semi;colon", "quote'", "x" * 101, "new\nline", "trailing\n", "é"])
def test_invalid_queue_names_are_refused(name):
    with pytest.raises(InvalidQueueName, match="invalid queue name"):
        ExampleJob.make().to_payload(queue=name)


def test_signed_payload_verifies_and_rejects_tampering():
    raw = ExampleJob.make(to="a@example.com").to_payload().encode("secret-key")
    body = json.loads(raw)
    assert body["data"]["to"] == "a@example.com"  # signing, not encryption
    assert Payload.decode(raw, "secret-key").data["to"] == "a@example.com"
    body["data"]["to"] = "evil@example.com"
    with pytest.raises(InvalidPayload, match="signature is invalid"):
        Payload.decode(json.dumps(body), "secret-key")
    del body["signature"]
    with pytest.raises(InvalidPayload, match="signature is missing"):
        Payload.decode(json.dumps(body), "secret-key")
    with pytest.raises(InvalidPayload, match="signature is invalid"):
        Payload.decode(raw, "another-key")


@pytest.mark.parametrize("key", ["", "secret-key"])
def test_the_job_id_is_read_from_the_top_level_whatever_the_data_holds(key):
    decoy = "11111111-1111-4111-8111-111111111111"
    job = ExampleJob.make(to=f'"uuid":"{decoy}"', items=[{"uuid": decoy}])
    payload = job.to_payload()
    raw = payload.encode(key)
    assert peek_uuid(raw) == payload.uuid == json.loads(raw)["uuid"]
    reordered = json.dumps({"uuid": payload.uuid, "data": {"uuid": decoy}})    # not our key order
    assert peek_uuid(reordered) == payload.uuid
    assert peek_uuid("not json") is None and peek_uuid('{"data": {}}') is None


@pytest.mark.parametrize("raw, fragment", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"uuid": "x"}', "payload field 'job' is missing"),
])
def test_malformed_payloads_are_refused(raw, fragment):
    with pytest.raises(InvalidPayload, match=fragment):
        Payload.decode(raw)


@pytest.mark.parametrize("path, fragment", [
    ("os.system", "outside the job packages"),
    ("builtins.eval", "outside the job packages"),
    ("app.jobs_evil.module.Job", "outside the job packages"),
    ("app.jobs.does_not_exist.Gone", "cannot be imported"),
    ("app.jobs.send_email_job.log", "not a Job subclass"),
    ("tests.jobs.sample_jobs.NotAJob", "not a Job subclass"),
    ("app.jobs.send_email_job.Job", "not a Job subclass"),
    ("__import__('os')", "not a valid class path"),
])
def test_only_job_subclasses_in_job_packages_resolve(path, fragment):
    with pytest.raises(InvalidPayload, match=fragment):
        resolve_job_class(path, ("app.jobs", "tests.jobs"))


def test_job_class_resolves():
    from app.jobs.send_email_job import SendEmailJob

    assert resolve_job_class("app.jobs.send_email_job.SendEmailJob", ("app.jobs",)) is SendEmailJob


def test_reserved_names_cannot_be_set_at_dispatch():
    with pytest.raises(SerializationError):
        ExampleJob.make(job_id="forged")
    with pytest.raises(SerializationError):
        ExampleJob.make(_private="x")


def test_settings_set_on_an_instance_or_at_dispatch_win_over_the_class():
    job = ExampleJob.make(to="x", queue="high", max_tries=7, timeout=5, retry_after=[1, 2, 3])
    payload = job.to_payload()
    assert (payload.queue, payload.max_tries, payload.timeout, payload.retry_after) == ("high", 7, 5.0, (1.0, 2.0, 3.0))
    assert set(payload.data) == {"to", "items"}           # settings travel in their own fields, not as data
    assert (ExampleJob.queue, ExampleJob.max_tries) == ("emails", 4)


def test_job_ids_are_random_version_4_uuids_never_repeated():
    ids = [Job().to_payload().uuid for _ in range(3 * IDS_PER_DRAW)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_a_forked_child_never_hands_out_its_parents_ids():
    new_id()                                  # the parent holds a batch of ids drawn in advance
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:                              # the child: its next ids, to the parent
        os.write(writer, " ".join(new_id() for _ in range(5)).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    with os.fdopen(reader) as pipe:
        child = set(pipe.read().split())
    parent = {new_id() for _ in range(IDS_PER_DRAW)}
    assert len(child) == 5 and not child & parent


@pytest.mark.parametrize("settings", [
    dict(max_tries=True),                     # == 1 as a dict key, "true" in JSON
    dict(timeout=60),                         # == 60.0, "60"
    dict(retry_after=(0,)),                   # == (0.0,), "[0]"
    dict(retry_after=(-0.0,)),                # == (0.0,), "[-0.0]"
    dict(timeout=float("inf"), retry_after=()),
    dict(pushed_at=0), dict(pushed_at=True), dict(pushed_at=float("inf")),
    dict(job="pkg.mod.Ünïcode\u2028Job", queue='q"\\\n'),
    dict(uuid='id "with" \\ quotes\x00', data={"z": [1, 2.5, None, "é"], "a": {"y": True, "b": {}}}),
])
def test_the_encoding_is_the_canonical_json_that_signatures_cover(settings):
    """The payload's fast encoding against the general one (sorted keys, no spaces), for settings
    equal as dict keys but not as JSON text, one after the other, and for odd text."""
    base = dict(uuid="u-1", job="pkg.mod.Job", queue="default", max_tries=1, timeout=60.0,
                retry_after=(0.0,), data={}, pushed_at=1795589709.5883777)
    for variant in (base, {**base, **settings}, base):      # no settings' text may leak to the others
        payload = Payload(**variant)
        expected = json.dumps(payload.body(), separators=(",", ":"), sort_keys=True)
        assert payload.encode() == expected
        signature = hmac.new(b"secret", expected.encode(), hashlib.sha256).hexdigest()
        assert payload.encode("secret") == f'{expected[:-1]},"signature":"{signature}"}}'
    assert Payload.decode(Payload(**base).encode("secret"), "secret") == Payload(**base)
