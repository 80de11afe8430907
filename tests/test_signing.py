"""Signed payloads (SPEC §8): with APP_KEY set, someone who can write to Redis or the jobs table but lacks
the key cannot make a worker run anything - not a forged job, not a validly signed one altered, not a
signed job A relabelled as job B. Each forgery ends in failed_jobs, nothing in it imported or run."""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import shutil
import subprocess
import sys

import pytest

from bootstrap.app import create_app
from core.payload import InvalidPayload, Payload
from tests.conftest import ROOT
from tests.jobs.hostile_jobs import DangerousJob
from tests.jobs.sample_jobs import RecordingJob, read_events
from tests.hostile_support import RawStore, drain
from tests.test_payload_security import store  # noqa: F401  the sqlite/mysql/redis fixture

KEY = "base64:" + base64.b64encode(secrets.token_bytes(32)).decode()
OTHER_KEY = "base64:" + base64.b64encode(secrets.token_bytes(32)).decode()
DANGEROUS = "tests.jobs.hostile_jobs.DangerousJob"
EVIL = "tests.jobs_evil.payload.EvilJob"


def signed(uuid: str, log: str, key: str = KEY) -> dict:
    """A validly signed RecordingJob payload, as a copy taken from the store would be."""
    payload = dataclasses.replace(RecordingJob.make(log=log, value="A").to_payload(), uuid=uuid)
    return json.loads(payload.encode(key))


def resign(body: dict, key: str) -> str:
    """The signature our encoder would give `body`, computed the way an attacker with `key` would."""
    unsigned = {k: v for k, v in body.items() if k != "signature"}
    canonical = json.dumps(unsigned, separators=(",", ":"), sort_keys=True).encode()
    return hmac.new(key.encode(), canonical, hashlib.sha256).hexdigest()


DROP = object()


def forgeries(log: str) -> list[tuple[str, str]]:
    """(stored payload, the reason in failed_jobs), each made from a payload signed with KEY."""
    def altered(n: int, **changes) -> str:
        body = signed(f"forged-{n:02d}", log)
        for name, value in changes.items():
            if value is DROP:
                del body[name]
            else:
                body[name] = value
        return json.dumps(body)

    real = signed("forged-xx", log)["signature"]
    with_empty_key = signed("forged-16", log)
    with_empty_key["signature"] = resign(with_empty_key, "")
    return [
        (altered(0, signature=DROP), "payload signature is missing"),
        (altered(1, signature=None), "payload signature is missing"),
        (altered(2, signature=12345), "payload signature is invalid"),
        (altered(3, signature=[real]), "payload signature is invalid"),
        (altered(4, signature={"sha256": real}), "payload signature is invalid"),
        (altered(5, signature=""), "payload signature is invalid"),
        (altered(6, signature="é" * 64), "payload signature is invalid"),
        (altered(7, signature="!!not base64 at all=="), "payload signature is invalid"),
        (altered(8, signature=secrets.token_hex(32)), "payload signature is invalid"),
        (altered(9, signature=signed("forged-09", log)["signature"].upper()), "payload signature is invalid"),
        (json.dumps(signed("forged-10", log, key=OTHER_KEY)), "payload signature is invalid"),
        (altered(11, data={"log": log, "value": "B"}), "payload signature is invalid"),
        # A validly signed job A relabelled as job B: the class is part of what is signed.
        (altered(12, job=DANGEROUS, displayName="DangerousJob"), "payload signature is invalid"),
        (altered(13, maxTries=99), "payload signature is invalid"),
        (altered(14, admin=True), "payload signature is invalid"),
        (altered(15, job=EVIL, displayName="EvilJob"), "payload signature is invalid"),
        (json.dumps(with_empty_key), "payload signature is invalid"),
    ]


async def test_without_the_key_no_write_to_the_store_makes_a_worker_run_a_job(store, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("APP_KEY", KEY)
    # tests.jobs_evil is a job package here, so only the signature check stands between a forged
    # payload naming it and its import.
    monkeypatch.setenv("JOB_PACKAGES", "app.jobs,tests.jobs,tests.jobs_evil")
    marker = tmp_path / "marker"
    monkeypatch.setenv("TESTS_JOBS_EVIL_MARKER", str(marker))
    log = str(tmp_path / "events")
    cases = forgeries(log)
    DangerousJob.instances = 0
    async with create_app() as app:
        await app.queue.connection()
        raw = RawStore(store)
        for payload, _ in cases:
            raw.push(payload)
        raw.close()
        legit = await RecordingJob.dispatch(log=log, value="legit")
        # --timeout skips the start-up scan of job classes, which would import tests.jobs_evil itself.
        await drain(app, concurrency=4, timeout=5)
        failed = {f.uuid: f for f in await (await app.queue.failed_store()).all()}
    assert [(e["job_id"], e.get("value")) for e in read_events(log)] == [(legit, "legit")]
    assert sorted(failed) == sorted(f"forged-{n:02d}" for n in range(len(cases)))
    for n, (payload, reason) in enumerate(cases):
        row = failed[f"forged-{n:02d}"]
        assert row.summary == f"core.payload.InvalidPayload: {reason}; the job was not loaded", (n, row.summary)
        assert row.payload == payload and KEY not in row.exception and KEY not in row.payload
    assert DangerousJob.instances == 0
    assert "tests.jobs_evil" not in sys.modules and not marker.exists()


def test_a_signature_covers_the_whole_payload_and_only_the_key_makes_one():
    body = signed("u-1", "/dev/null")
    assert Payload.decode(json.dumps(body), KEY).data == {"log": "/dev/null", "value": "A"}
    assert resign(body, KEY) == body["signature"]            # HMAC-SHA256 over every other field
    for name in ("uuid", "job", "queue", "maxTries", "timeout", "retryAfter", "data", "pushedAt", "displayName"):
        changed = dict(body, **{name: body[name] * 2 if isinstance(body[name], (int, str, list)) else {"x": 1}})
        with pytest.raises(InvalidPayload, match="signature is invalid"):
            Payload.decode(json.dumps(changed), KEY)
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)   # same content, other bytes
    assert Payload.decode(reordered, KEY).uuid == "u-1"


# -- make run writes a random APP_KEY ----------------------------------------------------------------

def make_env(directory) -> str:
    subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "env", f"PY={sys.executable}"], cwd=directory,
                   check=True, capture_output=True, text=True)
    return (directory / ".env").read_text()


def app_key(env_text: str) -> str:
    [line] = [line for line in env_text.splitlines() if line.startswith("APP_KEY=")]
    return line.removeprefix("APP_KEY=")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_env_writes_a_random_app_key_once(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        shutil.copy(ROOT / ".env.example", d / ".env.example")
    text = make_env(first)
    key = app_key(text)
    assert key.startswith("base64:") and len(base64.b64decode(key.removeprefix("base64:"), validate=True)) == 32
    assert text.replace(f"APP_KEY={key}", "APP_KEY=") == (ROOT / ".env.example").read_text()   # nothing else changed
    assert make_env(first) == text                              # a second run keeps the key
    assert app_key(make_env(second)) != key                     # each checkout gets its own

    (second / ".env").write_text("APP_NAME=x\n")                # an .env without the line gets one
    assert app_key(make_env(second)).startswith("base64:")
    (second / ".env").write_text("APP_KEY=base64:mine\n")       # a key of the user's own is kept
    assert make_env(second) == "APP_KEY=base64:mine\n"
