"""The JSON payload a job travels in: encoding, signing, and turning it back into a Job safely."""
from __future__ import annotations

import hashlib
import hmac
import importlib
import inspect
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from core import options as opt
from core.errors import FrameworkError
from core.options import Exponential

_CLASS_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)
_TUPLE = "__tuple__"
MAX_UUID_LENGTH = 255      # failed_jobs.uuid is a VARCHAR(255)


class InvalidPayload(FrameworkError):
    """A stored payload that cannot be turned back into a job; it goes to failed_jobs."""


class PayloadTooLarge(FrameworkError):
    """A job whose encoded payload is over QUEUE_MAX_PAYLOAD_BYTES; nothing was pushed."""


def check_size(raw: str, limit: int, job_class: str) -> None:
    """Refuse an encoded payload over `limit` bytes (0: no limit). Encoded payloads are ASCII
    (json.dumps escapes the rest), so len() is the byte count."""
    if limit and len(raw) > limit:
        raise PayloadTooLarge(f"{job_class} payload is {len(raw):,} bytes, over QUEUE_MAX_PAYLOAD_BYTES "
                              f"({limit:,}); nothing was pushed")


@dataclass(slots=True)
class Payload:
    """A job's stored form. Never changed once made; not frozen, for the cost of a frozen __init__ per job."""
    uuid: str
    job: str                       # "package.module.ClassName"
    queue: str
    max_tries: int
    timeout: float
    retry_after: tuple[float, ...]
    data: dict[str, Any] = field(default_factory=dict)
    pushed_at: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)    # core/options.py: only what differs from defaults

    @property
    def display_name(self) -> str:
        return self.job.rpartition(".")[2]

    def retry_delay(self, attempts: int) -> float:
        """Delay before the retry that follows attempt number `attempts` (1-based): from the
        Exponential backoff when there is one, else the list's item (its last one repeating)."""
        backoff = self.backoff
        if backoff is not None:
            return backoff.delay(attempts)
        if not self.retry_after:
            return 0.0
        return self.retry_after[min(attempts, len(self.retry_after)) - 1]

    # -- the frozen settings of the options map, with their defaults -------------------------

    @property
    def backoff(self) -> Exponential | None:
        frozen = self.options.get(opt.BACKOFF)
        return None if frozen is None else Exponential(*frozen)

    @property
    def retry_until(self) -> float | None:
        """Seconds after the push during which the job may still be tried; None: max_tries decides."""
        return self.options.get(opt.RETRY_UNTIL)

    @property
    def max_exceptions(self) -> int | None:
        return self.options.get(opt.MAX_EXCEPTIONS)

    @property
    def max_releases(self) -> int:
        return self.options.get(opt.MAX_RELEASES, opt.DEFAULT_MAX_RELEASES)

    @property
    def expires_after(self) -> float | None:
        """Seconds after the job is due within which it must start; None: it never expires."""
        return self.options.get(opt.EXPIRES_AFTER)

    @property
    def expires_quietly(self) -> bool:
        return self.options.get(opt.EXPIRES_QUIETLY, False)

    @property
    def dont_retry(self) -> tuple[str, ...]:
        """Class paths of the exceptions that fail the job at once; see options.exception_matches."""
        return tuple(self.options.get(opt.DONT_RETRY, ()))

    @property
    def middleware(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        """(class path, attributes) of each middleware given to `.through()`; restore_middleware builds them."""
        return tuple((path, attrs) for path, attrs in self.options.get(opt.MIDDLEWARE, ()))

    @property
    def keep_result(self) -> float:
        """Seconds the completed job's record (state, return value) is kept; 0: none (SPEC 11)."""
        return self.options.get(opt.KEEP_RESULT, 0.0)

    @property
    def priority(self) -> int:
        return self.options.get(opt.PRIORITY, 0)

    def body(self) -> dict[str, Any]:
        body = {"uuid": self.uuid, "displayName": self.display_name, "job": self.job,
                "queue": self.queue, "maxTries": self.max_tries, "timeout": self.timeout,
                "retryAfter": list(self.retry_after), "data": self.data, "pushedAt": self.pushed_at}
        if self.options:
            body["options"] = self.options
        return body

    def encode(self, key: str = "") -> str:
        """Canonical JSON (what the signature covers), with the signature appended as a last key."""
        canonical = _canonical_payload(self)
        if not key:
            return canonical
        return f'{canonical[:-1]},"signature":"{_hmac(canonical, key)}"}}'

    @classmethod
    def decode(cls, raw: str | bytes, key: str = "", max_bytes: int = 0) -> "Payload":
        """The payload of a stored job, checked before anything in it is trusted: its size first
        (an oversized one is not parsed), then its signature (when `key` is set), then each field's type."""
        if not isinstance(raw, (str, bytes)):
            raise InvalidPayload(f"payload is {_describe(raw)}, not JSON text")
        if max_bytes and _size(raw) > max_bytes:
            raise InvalidPayload(f"payload is {_size(raw):,} bytes, over QUEUE_MAX_PAYLOAD_BYTES ({max_bytes:,}); "
                                 f"it was not decoded")
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise InvalidPayload("payload is not a JSON object")
            signature = body.pop("signature", None)
            if key and not _signed_by(body, signature, key):
                state = "missing" if signature is None else "invalid"
                raise InvalidPayload(f"payload signature is {state}; the job was not loaded")
        except (ValueError, TypeError) as exc:   # UnicodeDecodeError is a ValueError
            raise InvalidPayload(f"payload is not valid JSON: {_short(exc)}") from None
        except RecursionError:
            raise InvalidPayload("payload is nested too deeply to be read") from None
        return cls(uuid=_job_id(body), job=_field(body, "job", str), queue=_field(body, "queue", str, "default"),
                   max_tries=_field(body, "maxTries", int), timeout=_field(body, "timeout", float),
                   retry_after=_retry_after(body), data=_field(body, "data", dict, {}),
                   pushed_at=_field(body, "pushedAt", float, 0.0),
                   options=_options(body) if "options" in body else {})


_MISSING = object()
_KIND = {str: "a string", int: "a whole number", float: "a number", dict: "a JSON object"}


def _field(body: dict[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    """One field of the right JSON type: no bools as numbers, no NaN or Infinity, no strings as numbers."""
    value = body.get(name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise InvalidPayload(f"payload field {name!r} is missing")
        return default
    if kind is float and type(value) is int and abs(value) < 2**53:
        value = float(value)
    # kind is float here means value is a float: `kind is float` is the cheaper test, which mypy cannot follow
    if type(value) is not kind or (kind is float and not math.isfinite(value)):  # type: ignore[arg-type]
        raise InvalidPayload(f"payload field {name!r} must be {_KIND[kind]}, got {_describe(value)}")
    return value


def _options(body: dict[str, Any]) -> dict[str, Any]:
    raw = body.get("options", _MISSING)
    if raw is _MISSING:
        return {}
    try:
        return opt.decode_options(raw)
    except ValueError as exc:
        raise InvalidPayload(str(exc)) from None


def _job_id(body: dict[str, Any]) -> str:
    job_id = _field(body, "uuid", str)
    if not _valid_id(job_id):
        raise InvalidPayload(f"payload field 'uuid' must be 1-{MAX_UUID_LENGTH} printable characters, "
                             f"got {_describe(job_id)}")
    return job_id


def _valid_id(job_id: str) -> bool:
    # Printable: the id goes into log lines and tables, where a newline or escape code could forge output.
    return 0 < len(job_id) <= MAX_UUID_LENGTH and job_id.isprintable()


def valid_id(job_id: object) -> bool:
    """Whether a job id from elsewhere than a payload (a store's key) may name the job: 1-255
    printable characters, as a payload's own (bytes that were not UTF-8 are not printable)."""
    return isinstance(job_id, str) and _valid_id(job_id)


def _retry_after(body: dict[str, Any]) -> tuple[float, ...]:
    retry = body.get("retryAfter", [])
    items = retry if isinstance(retry, list) else [retry]
    return tuple(_field({"retryAfter": r}, "retryAfter", float) for r in items)


def _signed_by(body: dict[str, Any], signature: Any, key: str) -> bool:
    # Compared as bytes: compare_digest refuses non-ASCII text, and a forged signature may hold some.
    return isinstance(signature, str) and hmac.compare_digest(
        signature.encode("utf-8", "surrogatepass"), _sign(body, key).encode())


def _size(raw: str | bytes) -> int:
    """Bytes of a stored payload; ours are ASCII, so only a foreign one pays for an encode."""
    if isinstance(raw, bytes) or raw.isascii():
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


def _short(value: Any, limit: int = 80) -> str:
    """A hostile text as a short one-line excerpt (repr escapes newlines and control characters)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(value: Any) -> str:
    """`str '3'`, `bool True`, or just `list`: containers are not printed (they may be huge or deep)."""
    if value is None or isinstance(value, (str, int, float)):
        return f"{type(value).__name__} {_short(value)}"
    return type(value).__name__


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TAIL = re.compile(r'"(,"signature":"[0-9a-f]{64}")?\}')      # what may follow the last key's value


def _is_uuid(text: str) -> bool:
    """_UUID.fullmatch(text), at a fifth of its cost (peek_uuid runs for every row a batch pushes):
    dashes at 8, 13, 18 and 23, and nothing but lowercase hex digits once those four are removed."""
    return (len(text) == 36 and text[8] == text[13] == text[18] == text[23] == "-"
            and not text.replace("-", "", 4).strip("0123456789abcdef"))


def peek_uuid(raw: str | bytes) -> str | None:
    """The job id of a raw payload if it can be read, without trusting anything else in it:
    a string of 1-255 printable characters, else None (the caller makes up an id)."""
    if isinstance(raw, str):
        # Our encoding sorts keys, so "uuid" is the last top-level key (only the signature
        # follows), and any "uuid" inside the data comes before it, its quotes escaped.
        at = raw.rfind('"uuid":"')
        job_id = raw[at + 8:at + 44]
        if at >= 0 and _is_uuid(job_id) and (len(raw) == at + 46 and raw[-2:] == '"}' or _TAIL.fullmatch(raw, at + 44)):
            return job_id
    try:
        body = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    found = body.get("uuid") if isinstance(body, dict) else None
    return found if isinstance(found, str) and _valid_id(found) else None


def peek_priority(raw: str) -> int:
    """The priority (SPEC 11) of a raw payload, 0 when it has none or cannot be read. A job without
    one carries no "priority" key anywhere, so the default path is one substring search."""
    if '"priority":' not in raw:
        return 0
    try:
        options = json.loads(raw).get("options")
        value = options.get(opt.PRIORITY, 0) if isinstance(options, dict) else 0
    except (ValueError, TypeError, AttributeError, RecursionError):
        return 0
    return value if type(value) is int and value in opt.PRIORITY_RANGE else 0


_canonical = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
_json_text = json.encoder.encode_basestring_ascii     # what _canonical writes for a str
_templates: dict[tuple[str, ...], tuple[str, str]] = {}


def _canonical_payload(payload: Payload) -> str:
    """_canonical(payload.body()), character for character, at a third of its cost.

    The JSON encoder was a tenth of a sequential dispatch. Sorted, the body's keys are data,
    displayName, job, maxTries, [options,] pushedAt, queue, retryAfter, timeout, uuid; all but
    data, options, pushedAt and uuid come from the job class's settings, so the text between
    those is built once per settings (keyed on their reprs: 1, 1.0 and True are equal in a dict
    key but not in JSON) and kept. Options may differ per dispatch (a deadline, `.through()`),
    so they are spliced in rather than keyed on. tests/test_job.py holds the two encodings equal."""
    settings = (payload.job, payload.queue, repr(payload.max_tries), repr(payload.timeout),
                repr(payload.retry_after))
    parts = _templates.get(settings)
    if parts is None:
        if len(_templates) >= 1024:         # settings are few; a flood of new ones is not kept
            _templates.clear()
        parts = _templates[settings] = (
            f',"displayName":{_canonical(payload.display_name)},"job":{_canonical(payload.job)},'
            f'"maxTries":{_canonical(payload.max_tries)}',
            f',"queue":{_canonical(payload.queue)},"retryAfter":{_canonical(list(payload.retry_after))},'
            f'"timeout":{_canonical(payload.timeout)},"uuid":')
    data = _canonical(payload.data) if payload.data else "{}"
    pushed_at = payload.pushed_at
    at = repr(pushed_at) if type(pushed_at) is float and math.isfinite(pushed_at) else _canonical(pushed_at)
    options = f',"options":{_canonical(payload.options)}' if payload.options else ""
    return f'{{"data":{data}{parts[0]}{options},"pushedAt":{at}{parts[1]}{_json_text(payload.uuid)}}}'


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


def import_class(path: str, packages: tuple[str, ...], base: type, kind: str = "job") -> type:
    """Import the subclass of `base` a payload names, refusing anything outside the job packages.

    The path must be exactly where the class is defined, so an alias, an attribute walked through,
    or a class merely imported into a job module is refused too. `base` comes from the caller: the
    codec itself knows no job class (core.job.resolve_job_class passes Job)."""
    cls = _guarded_import(path, packages, kind)
    if not (isinstance(cls, type) and issubclass(cls, base) and cls is not base
            and f"{cls.__module__}.{cls.__qualname__}" == path):
        raise InvalidPayload(f"{path} is not a {base.__name__} subclass defined there; it was not run")
    return cls


def _guarded_import(path: Any, packages: tuple[str, ...], kind: str) -> Any:
    """What `path` names, imported only from a module under `packages` (SPEC 8): a payload
    cannot make a worker import anything else."""
    if not isinstance(path, str) or not _CLASS_PATH.fullmatch(path) or ".__" in f".{path}":
        raise InvalidPayload(f"{kind} class {_short(path)} is not a valid class path; it was not imported")
    module_name, _, class_name = path.rpartition(".")
    if not under_packages(module_name, packages):
        raise InvalidPayload(f"{kind} class {path} is outside the {kind} packages ({', '.join(packages)}); "
                             "it was not imported")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidPayload(f"{kind} module {module_name} cannot be imported: {exc}") from None
    return getattr(module, class_name, None)


def under_packages(module_name: str, packages: tuple[str, ...]) -> bool:
    return any(module_name == p or module_name.startswith(p + ".") for p in packages)


def middleware_packages(job_packages: tuple[str, ...]) -> tuple[str, ...]:
    return (opt.MIDDLEWARE_PACKAGE, *job_packages)


def restore_middleware(payload: Payload, job_packages: tuple[str, ...]) -> list[Any]:
    """The middleware a dispatch gave `.through()`, rebuilt for the worker: each class imported
    through the same guard as job classes (core.queue.middleware or the job packages), the object
    made without calling its __init__ and given its public attributes back. A worker runs the
    chain configured middleware, then job.middleware(), then these, then handle()."""
    packages = middleware_packages(job_packages)
    return [_restored(path, attrs, packages) for path, attrs in payload.middleware]


def _restored(path: str, attrs: dict[str, Any], packages: tuple[str, ...]) -> Any:
    from core.job import Job

    cls = _guarded_import(path, packages, "middleware")
    if not (isinstance(cls, type) and not issubclass(cls, (BaseException, Job)) and opt.class_path(cls) == path):
        raise InvalidPayload(f"{path} is not a middleware class defined there; it was not run")
    try:
        middleware = cls.__new__(cls)
        for name, value in attrs.items():
            if name.startswith("_") or _is_behaviour(inspect.getattr_static(cls, name, None)):
                raise InvalidPayload(f"middleware attribute {name[:80]!r} of {path} cannot be restored")
            middleware.__dict__[name] = from_json_value(value)
    except (TypeError, AttributeError) as exc:    # no __dict__ (slots), or a __new__ that needs arguments
        raise InvalidPayload(f"middleware {path} cannot be restored: {_short(str(exc))}") from None
    if not (callable(middleware) or callable(getattr(middleware, "handle", None))):
        raise InvalidPayload(f"{path} is not a middleware (it has neither __call__ nor handle); it was not run")
    return middleware


def _is_behaviour(value: Any) -> bool:
    """A method, property or other descriptor: an instance attribute of that name would hide it."""
    return value is not None and (callable(value) or hasattr(type(value), "__get__"))


def now() -> float:
    return time.time()


_ids: list[str] = []
IDS_PER_DRAW = 256


def new_id() -> str:
    """A random (version 4) UUID in its usual text form, as str(uuid.uuid4()) gives, at half its cost:
    the random bytes for IDS_PER_DRAW ids are read from os.urandom at once. A forked child drops
    the ids left over from its parent (os.register_at_fork), so two processes never share one."""
    if not _ids:
        raw = os.urandom(16 * IDS_PER_DRAW)
        for at in range(0, len(raw), 16):
            value = (int.from_bytes(raw[at:at + 16], "big") & _CLEAR_VERSION) | _VERSION_4
            text = f"{value:032x}"
            _ids.append(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")
    return _ids.pop()


# RFC 4122 version 4: bits 76-79 are the version (0100), bits 62-63 the variant (10).
_CLEAR_VERSION = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4 = (0x4000 << 64) | (0x8000 << 48)
os.register_at_fork(after_in_child=_ids.clear)
