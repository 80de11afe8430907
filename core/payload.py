"""The JSON payload a job travels in: encoding, signing, and turning it back into a Job safely."""
from __future__ import annotations

import hashlib
import hmac
import importlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from core.errors import FrameworkError

_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)
_TUPLE = "__tuple__"


class InvalidPayload(FrameworkError):
    """A stored payload that cannot be turned back into a job; it goes to failed_jobs."""


@dataclass(frozen=True)
class Payload:
    uuid: str
    job: str                       # "package.module.ClassName"
    queue: str
    max_tries: int
    timeout: float
    retry_after: tuple[float, ...]
    data: dict[str, Any] = field(default_factory=dict)
    pushed_at: float = 0.0

    @property
    def display_name(self) -> str:
        return self.job.rpartition(".")[2]

    def retry_delay(self, attempts: int) -> float:
        """Delay before the retry that follows attempt number `attempts` (1-based)."""
        if not self.retry_after:
            return 0.0
        return self.retry_after[min(attempts, len(self.retry_after)) - 1]

    def body(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "displayName": self.display_name, "job": self.job,
                "queue": self.queue, "maxTries": self.max_tries, "timeout": self.timeout,
                "retryAfter": list(self.retry_after), "data": self.data, "pushedAt": self.pushed_at}

    def encode(self, key: str = "") -> str:
        """Canonical JSON (what the signature covers), with the signature appended as a last key."""
        canonical = _canonical(self.body())
        if not key:
            return canonical
        return f'{canonical[:-1]},"signature":"{_hmac(canonical, key)}"}}'

    @classmethod
    def decode(cls, raw: str | bytes, key: str = "") -> "Payload":
        try:
            body = json.loads(raw)
        except (ValueError, TypeError) as exc:
            raise InvalidPayload(f"payload is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InvalidPayload("payload is not a JSON object")
        signature = body.pop("signature", None)
        if key and (not isinstance(signature, str) or not hmac.compare_digest(signature, _sign(body, key))):
            state = "missing" if signature is None else "invalid"
            raise InvalidPayload(f"payload signature is {state}; the job was not loaded")
        try:
            retry = body.get("retryAfter", [])
            return cls(uuid=str(body["uuid"]), job=str(body["job"]), queue=str(body.get("queue", "default")),
                       max_tries=int(body["maxTries"]), timeout=float(body["timeout"]),
                       retry_after=tuple(float(r) for r in (retry if isinstance(retry, list) else [retry])),
                       data=dict(body.get("data") or {}), pushed_at=float(body.get("pushedAt", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidPayload(f"payload is missing or has a malformed field: {exc}") from None


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TAIL = re.compile(r'"(,"signature":"[0-9a-f]{64}")?\}')      # what may follow the last key's value


def peek_uuid(raw: str | bytes) -> str | None:
    """The job id of a raw payload if it can be read, without trusting anything else in it."""
    if isinstance(raw, str):
        # Our encoding sorts keys, so "uuid" is the last top-level key (only the signature
        # follows), and any "uuid" inside the data comes before it, its quotes escaped.
        at = raw.rfind('"uuid":"')
        if at >= 0 and _UUID.fullmatch(raw, at + 8, at + 44) and _TAIL.fullmatch(raw, at + 44):
            return raw[at + 8:at + 44]
    try:
        body = json.loads(raw)
        return str(body["uuid"]) if isinstance(body, dict) and body.get("uuid") else None
    except (ValueError, TypeError, KeyError):
        return None


_canonical = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _hmac(canonical: str, key: str) -> str:
    return hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def _sign(body: dict[str, Any], key: str) -> str:
    return _hmac(_canonical(body), key)


def to_json_value(value: Any, where: str) -> Any:
    """A JSON-safe copy of an attribute value; tuples are tagged so they come back as tuples."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError(f"{where} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, list):
        return [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {_TUPLE: [to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a key of type {type(k).__name__} ({k!r}); only str keys are allowed")
            out[k] = to_json_value(v, f"{where}[{k!r}]")
        return out
    raise TypeError(f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which cannot be serialized")


def from_json_value(value: Any) -> Any:
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and _TUPLE in value and isinstance(value[_TUPLE], list):
            return tuple(from_json_value(v) for v in value[_TUPLE])
        return {k: from_json_value(v) for k, v in value.items()}
    return value


def resolve_job_class(path: str, packages: tuple[str, ...]) -> type:
    """Import the Job subclass a payload names, refusing anything outside the job packages."""
    from core.job import Job

    if not _CLASS_PATH.fullmatch(path):
        raise InvalidPayload(f"job class {path!r} is not a valid class path")
    module_name, _, class_name = path.rpartition(".")
    if not any(module_name == p or module_name.startswith(p + ".") for p in packages):
        raise InvalidPayload(f"job class {path} is outside the job packages ({', '.join(packages)}); it was not imported")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidPayload(f"job module {module_name} cannot be imported: {exc}") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Job) and cls is not Job):
        raise InvalidPayload(f"{path} is not a Job subclass; it was not run")
    return cls


def now() -> float:
    return time.time()
