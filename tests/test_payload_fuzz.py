"""Fuzzing the worker with stored payloads: random bytes, mangled JSON, wrong shapes and types, deep nesting,
oversized bodies, and (with APP_KEY) signed payloads altered in every way. Each one must end in
failed_jobs, and the worker must survive to run the good jobs queued around them.

Seeded, so a failure can be replayed: FUZZ_SEED=<seed> FUZZ_CASES=<n> pytest tests/test_payload_fuzz.py
"""
from __future__ import annotations

import json
import os
import random
import string

import pytest

from bootstrap.app import create_app
from tests.jobs.hostile_jobs import DangerousJob
from tests.jobs.sample_jobs import RecordingJob, read_events
from tests.hostile_support import RawStore, drain
from tests.test_payload_security import OUTSIDE, store  # noqa: F401  `store`: the sqlite/mysql/redis fixture

SEED = int(os.environ.get("FUZZ_SEED", "20261125"))
CASES = int(os.environ.get("FUZZ_CASES", "300"))
KEY = "base64:fuzz-signing-key-Yq3v"
FIELDS = ("uuid", "displayName", "job", "queue", "maxTries", "timeout", "retryAfter", "data", "pushedAt")
# Fields given hostile values. Not the uuid: failed_jobs keeps one row per uuid, so two payloads forged
# with the same id (say "3") would share a row, and the count below could not tell them apart.
VALUES = FIELDS[1:]
BAD_CLASSES = [path for path, _ in OUTSIDE] + ["", ".", "a.b", "tests.jobs", "tests.jobs.hostile_jobs.Nope"]


def hostile_value(rng: random.Random, depth: int = 0):
    """A JSON value of any type, often the wrong one for the field it lands in."""
    kind = rng.randrange(11 if depth < 3 else 8)
    if kind < 5:
        return [None, True, False, rng.randint(-2**63, 2**63), rng.random() * 10 ** rng.randint(-5, 300)][kind]
    if kind == 5:
        return rng.choice(["", "3", "5.0", "NaN", "\x00", "\u2028", "\ud800", "é" * 40, "x" * 300, "[[[[]]]]"])
    if kind in (6, 7):
        return rng.choice(string.printable) * rng.randint(1, 50)
    if kind == 8:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 9:
        return {rng.choice(FIELDS + ("", "_x")): hostile_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return {"__tuple__": [hostile_value(rng, depth + 1)]}


def base_body(n: int, rng: random.Random, log: str, job: str) -> dict:
    return {"uuid": f"fz{n:04d}-{rng.getrandbits(32):08x}", "displayName": job.rpartition(".")[2], "job": job,
            "queue": "default", "maxTries": 1, "timeout": 5.0, "retryAfter": [0.0],
            "data": {"log": log, "value": n}, "pushedAt": 1.0}


def mangle(text: str, rng: random.Random) -> str:
    """A few random edits: flip, insert, delete, or cut the text short."""
    chars = list(text)
    for _ in range(rng.randint(1, 5)):
        op, at = rng.randrange(4), rng.randrange(len(chars) or 1)
        if op == 0 and chars:
            chars[at] = chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 32), rng.randrange(128, 0x3000)]))
        elif op == 1:
            chars.insert(at, rng.choice('{}[]",:\\0e.-x\x00 '))
        elif op == 2 and chars:
            del chars[at]
        else:
            chars = chars[:at]
    return "".join(chars)


def unsigned_case(n: int, rng: random.Random, log: str) -> str | bytes:
    """A payload no worker may run: each is broken, or names a class outside the job packages."""
    kind = rng.randrange(8)
    body = base_body(n, rng, log, rng.choice(BAD_CLASSES))
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    if kind == 1:
        return "".join(rng.choice(string.printable) for _ in range(rng.randint(1, 300)))
    if kind == 2:
        return mangle(json.dumps(body), rng)
    if kind == 3:       # the right fields, the wrong values
        for name in rng.sample(VALUES, rng.randint(1, 4)):
            body[name] = hostile_value(rng)
        return json.dumps(body)
    if kind == 4:       # fields missing, fields added
        for name in rng.sample(FIELDS[1:], rng.randint(1, 3)):
            del body[name]
        body[rng.choice(["signature", "admin", "__class__", ""])] = hostile_value(rng)   # ignored: no APP_KEY
        return json.dumps(body)
    if kind == 5:
        depth = rng.choice([1_000, 5_000, 100_000])
        return json.dumps(body)[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
    if kind == 6:       # JSON, but not an object
        return json.dumps(hostile_value(rng)) if rng.random() < 0.9 else json.dumps(body).encode("utf-16")
    # Bytes that are not UTF-8 inside otherwise readable JSON.
    return json.dumps(body).encode().replace(b'"queue"', b'"q\xff\xfe"', 1)


def signed_case(n: int, rng: random.Random, log: str) -> str:
    """A payload that would run RecordingJob, signed with KEY, then changed so its content differs."""
    job = RecordingJob.make(log=log, value=n)
    job.job_id = f"fz{n:04d}-{rng.getrandbits(32):08x}"
    body = json.loads(job.to_payload().encode(KEY))
    kind = rng.randrange(5)
    if kind == 0:
        body["signature"] = rng.choice([None, 0, "", [], {}, "é" * 64, body["signature"][:-1],
                                        "%064x" % rng.getrandbits(256), hostile_value(rng)])
    elif kind == 1:     # one field given another value
        name = rng.choice(VALUES)
        value = hostile_value(rng)
        while value == body[name] and type(value) is type(body[name]):
            value = hostile_value(rng)
        body[name] = value
    elif kind == 2:     # another class: job A relabelled as job B
        body["job"] = rng.choice(["tests.jobs.hostile_jobs.DangerousJob", "tests.jobs.sample_jobs.FlakyJob"])
    elif kind == 3:
        body.pop(rng.choice(FIELDS))
    else:
        return json.dumps(body)[:rng.randrange(len(json.dumps(body)))]   # cut short: never valid JSON
    return json.dumps(body)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
async def test_every_fuzzed_payload_ends_in_failed_jobs_and_the_worker_survives(store, signed, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    if signed:
        monkeypatch.setenv("APP_KEY", KEY)
    rng = random.Random(f"{SEED}-{store}-{signed}")
    log = str(tmp_path / "events")
    DangerousJob.instances = 0
    async with create_app() as app:
        await app.queue.connection()
        first = await RecordingJob.dispatch(log=log, value="first")
        raw = RawStore(store)
        count = CASES if not signed else CASES // 3
        for n in range(count):
            raw.push(signed_case(n, rng, log) if signed else unsigned_case(n, rng, log))
        raw.push(json.dumps(base_body(count, rng, log, OUTSIDE[0][0]))[:-1] + ',"pad":"' + "x" * 2**20 + '"}')
        raw.close()
        last = await RecordingJob.dispatch(log=log, value="last")
        worker = await drain(app, concurrency=4)
        failed = await (await app.queue.failed_store()).all()
        sizes = (await (await app.queue.connection()).sizes(["default"]))["default"]
    ran = [e["job_id"] for e in read_events(log)]
    print(f"fuzz seed {SEED}, {store}, {'signed' if signed else 'unsigned'}: {count + 1} payloads, "
          f"{len(failed)} failed, ran {len(ran)}")
    assert sorted(ran) == sorted([first, last]), f"a fuzzed payload ran (FUZZ_SEED={SEED})"
    assert len(failed) == count + 1, f"FUZZ_SEED={SEED}"
    assert sizes.as_dict() == {"pending": 0, "delayed": 0, "reserved": 0}
    assert all(f.summary.startswith("core.payload.InvalidPayload: ") for f in failed), \
        [f.summary for f in failed if not f.summary.startswith("core.payload.InvalidPayload: ")][:5]
    assert DangerousJob.instances == 0 and worker.stop_reason == "queue empty"
