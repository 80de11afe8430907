"""Wake-up (SPEC 17): an idle worker on a database starts a newly dispatched job within milliseconds
instead of after `--sleep`. Latency only, never correctness: every wait here is bounded by the
caller's timeout (the worker's --sleep), so a wake-up that never comes costs at most that.

- `Waker`, the worker's side: `mark()` before a reserve finds nothing, then `wait(queues, mark,
  timeout)` returns True once something may have arrived on one of `queues` since the mark.
- `Wakeups`, a Waker fed by events (PostgreSQL's LISTEN connection, the same-host socket bus).
- `DataVersionWaker`, SQLite's: `PRAGMA data_version` changes when another connection commits.
- `Announcer`, the dispatcher's side: after a push committed, a wake-up for its queue, paced by a
  token bucket (BURST at once, then RATE a second; a trailing one covers the pushes in between).
- `Pace`, the buckets shared by every process of the host that dispatches to one database, so
  sixteen dispatcher processes pushing at full speed send about RATE wake-ups a second between
  them, not one per dispatch.
- `SocketBus`, MySQL/MariaDB's (no change counter, no notifications): each worker process binds a
  UNIX datagram socket in a directory of its database; a dispatcher on the same host sends the
  queue's name to each. Dispatchers on other hosts reach no socket: their jobs wait for --sleep.

A leaf module: it imports nothing of ours.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import math
import mmap
import os
import secrets
import socket
import sqlite3
import struct
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("worker")

RATE = 40.0            # wake-ups a second per queue from one host (Pace), sustained (a NOTIFY costs a commit)...
BURST = 8.0            # ... after a burst of this many at once
GRACE = 0.1            # seconds a due wake-up waits for the process's next push to carry it (Announcer's carried)
SQLITE_POLL = 0.005    # seconds between two reads of SQLite's change counter while a worker waits (no inotify)
SQLITE_SAFETY_POLL = 0.25   # with inotify: a read this often all the same (a write it may not report)
ANY = ""               # a wake-up for every queue (not a queue name: those are 1-100 characters)
DEBT = 1000.0          # the most tokens a shared bucket may owe (trailing wake-ups of many processes at once)
NEVER = -1.0           # no wake-up sent yet (time.monotonic() counts from the boot, >= 0)
Bucket = tuple[float, float, float]     # tokens, when they were counted, when a wake-up was last sent (monotonic)


class Waker:
    def mark(self) -> int:
        """Where the wake-ups are now; taken before the reserve that found nothing."""
        raise NotImplementedError

    async def wait(self, queues: Sequence[str], since: int, timeout: float,
                   interrupt: asyncio.Event | None = None) -> bool:
        """True once a wake-up for one of `queues` came after `since`; False after `timeout`
        seconds or once `interrupt` is set."""
        raise NotImplementedError

    def close(self) -> None: ...


class Wakeups(Waker):
    """Wake-ups that arrive as events: `wake(queue)` from a listener's callback."""

    def __init__(self) -> None:
        self._count = 0
        self._last: dict[str, int] = {}       # queue -> the count at its last wake-up
        self._event = asyncio.Event()

    def mark(self) -> int:
        return self._count

    def wake(self, queue: str = ANY) -> None:
        self._count += 1
        self._last[queue] = self._count
        self._event.set()

    def woken(self, queues: Sequence[str], since: int) -> bool:
        last = self._last
        return last.get(ANY, 0) > since or any(last.get(queue, 0) > since for queue in queues)

    async def wait(self, queues: Sequence[str], since: int, timeout: float,
                   interrupt: asyncio.Event | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while not self.woken(queues, since):
            left = deadline - time.monotonic()
            if left <= 0 or (interrupt is not None and interrupt.is_set()):
                return False
            if self._event.is_set():
                self._event = asyncio.Event()     # a wake-up for other queues: wait for the next
            await _either(self._event, interrupt, left)
        return True


async def _either(event: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
    """Until `event` or `other` is set, or `timeout` seconds passed."""
    waits = [asyncio.ensure_future(event.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


class DataVersionWaker(Waker):
    """SQLite: `PRAGMA data_version` on a connection of its own changes when any other connection
    (another process, or this process's queue connection) commits: a few microseconds from the WAL
    index in shared memory, no disk read, in the event loop's thread. When is it read? On Linux,
    when inotify says the -wal file was written (every commit writes it), and every
    SQLITE_SAFETY_POLL seconds besides: an idle worker costs next to no CPU. Elsewhere, every
    SQLITE_POLL seconds while a worker waits (polling every 5 ms cost an idle worker 5% of a CPU)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._version = 0
        self._watch: int | None = None      # the inotify descriptor, once opened
        self._watched = False

    def _read(self) -> int:
        try:
            if self._conn is None:
                # A zero busy timeout: a locked file (a checkpoint) answers at once, as "changed".
                self._conn = sqlite3.connect(str(self.path), timeout=0, isolation_level=None,
                                             check_same_thread=False)
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            self._version = int(version)
        except sqlite3.Error:
            self._version += 1
        return self._version

    def mark(self) -> int:
        return self._read()

    async def wait(self, queues: Sequence[str], since: int, timeout: float,
                   interrupt: asyncio.Event | None = None) -> bool:
        deadline = time.monotonic() + timeout
        watch = self._inotify()
        while self._read() == since:
            left = deadline - time.monotonic()
            if left <= 0 or (interrupt is not None and interrupt.is_set()):
                return False
            if watch is None:
                await asyncio.sleep(min(SQLITE_POLL, left))
            else:
                await self._written(watch, min(SQLITE_SAFETY_POLL, left))
        return True

    def _inotify(self) -> int | None:
        """An inotify descriptor watching the -wal file for writes; None where there is none."""
        if not self._watched:
            self._watched = True
            self._watch = _watch_writes(Path(f"{self.path}-wal"))
        return self._watch

    @staticmethod
    async def _written(watch: int, timeout: float) -> None:
        """Until the watched file is written, or `timeout` seconds passed; drains the events."""
        loop = asyncio.get_running_loop()
        written = asyncio.Event()
        loop.add_reader(watch, written.set)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await written.wait()
        finally:
            loop.remove_reader(watch)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(watch, 4096):
                pass

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
        if self._watch is not None:
            os.close(self._watch)
            self._watch = None


IN_MODIFY = 0x2


def _watch_writes(path: Path) -> int | None:
    """inotify (Linux, through libc) on `path` for writes, non-blocking; None when unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY) < 0:
        os.close(fd)
        return None
    return fd


class Announcer:
    """The dispatcher's side: `announce(queue)` after a push committed. Wake-ups for a queue are
    paced by a token bucket: up to BURST are sent at once, before announce returns (a script that
    dispatches and exits still wakes the worker), then RATE a second; a push that finds the bucket
    empty is covered by one wake-up sent when the next token comes (every push in between too).

    With `shared` (a Pace), the bucket is the host's, not the process's: every process on this
    host that dispatches to the same database takes from one bucket per queue, so sixteen
    dispatcher processes pushing at full speed send about RATE wake-ups a second between them,
    not sixteen times that (each at under RATE pushes a second would otherwise send one per push:
    a NOTIFY is one more statement, and commit, per dispatch). A held-back push is covered by a
    wake-up any process sends after it committed: a process whose trailing wake-up comes due sends
    it only if no process has sent one since its last push (every such wake-up comes after the
    push's commit, so the worker it wakes sees the job).

    `carried`: a wake-up's sending takes a pooled connection (PostgreSQL's NOTIFY). Then a
    trailing wake-up that comes due is carried by the process's next push, sent right after it
    on the connection that push used, or sent on its own after GRACE seconds if no push comes. A
    wake-up sent as soon as it is due, beside the pushes, would hold the connection the next push
    wants, which then opens a second one, which a dispatcher otherwise never needs (on PostgreSQL
    a server process; 16 short-lived dispatchers paid more for those than for the notifications).
    Without `carried` (a datagram), it goes as soon as it is due."""

    def __init__(self, send: Callable[[str], Awaitable[None]], rate: float | None = None,
                 burst: float | None = None, shared: Pace | None = None, carried: bool = False) -> None:
        self._send = send
        self._carried = carried
        self._rate = RATE if rate is None else rate
        self._burst = BURST if burst is None else burst
        self._shared = shared
        self._bucket: dict[str, Bucket] = {}          # queue -> this process's bucket (no `shared`)
        self._trailing: dict[str, asyncio.TimerHandle] = {}
        self._pending: dict[str, float] = {}          # queue -> when its last held-back push committed
        self._due: dict[str, asyncio.TimerHandle] = {}    # queue -> a wake-up due, waiting for the next push
        self._tasks: set[asyncio.Task[None]] = set()

    async def announce(self, queue: str) -> None:
        now = time.monotonic()
        if queue in self._due:
            # A held-back wake-up came due since the last push: it goes now, on the connection this
            # push has just given back, not on one more opened for it beside the next push.
            self._due.pop(queue).cancel()
            self._update(queue, lambda bucket: ((bucket[0], bucket[1], max(bucket[2], now)), None))
            await self._deliver(queue)
            return
        if queue in self._trailing:
            self._pending[queue] = now               # the pending wake-up covers this push too
            return
        wait = self._update(queue, lambda bucket: self._take(bucket, now))
        if wait > 0:
            self._pending[queue] = now
            self._trailing[queue] = asyncio.get_running_loop().call_later(wait, self._fire, queue)
            return
        await self._deliver(queue)

    def _refill(self, bucket: Bucket, now: float) -> float:
        tokens, counted, _ = bucket
        return min(self._burst, tokens + max(0.0, now - counted) * self._rate)

    def _take(self, bucket: Bucket, now: float) -> tuple[Bucket, float]:
        """Take a token: wait 0 if there was one (the wake-up goes now), else how long until the next."""
        tokens = self._refill(bucket, now)
        if tokens >= 1:
            return (tokens - 1, now, now), 0.0
        return (tokens, now, bucket[2]), (1 - tokens) / self._rate

    def _fire(self, queue: str) -> None:
        self._trailing.pop(queue, None)
        pushed = self._pending.pop(queue, 0.0)
        now = time.monotonic()

        def due(bucket: Bucket) -> tuple[Bucket, bool]:
            if bucket[2] >= pushed:
                return bucket, False                 # another process's wake-up came after our push
            return (self._refill(bucket, now) - 1, now, now), True

        if not self._update(queue, due):
            return
        if self._carried:
            self._due[queue] = asyncio.get_running_loop().call_later(GRACE, self._send_due, queue)
        else:
            self._send_due(queue)

    def _send_due(self, queue: str) -> None:
        """No push came to carry the wake-up within GRACE: it goes on its own."""
        self._due.pop(queue, None)
        self._spawn(self._deliver(queue))

    def _spawn(self, job: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _update(self, queue: str, change: Callable[[Bucket], tuple[Bucket, T]]) -> T:
        if self._shared is not None:
            done = self._shared.update(queue, self._burst, change)
            if done is not None:
                return done[1]
        bucket, result = change(self._bucket.get(queue) or (self._burst, time.monotonic(), NEVER))
        self._bucket[queue] = bucket
        return result

    async def _deliver(self, queue: str) -> None:
        try:
            await self._send(queue)
        except Exception as exc:      # the push committed: a lost wake-up costs a worker at most --sleep
            log.debug("wake-up for queue %s not sent: %s", queue, exc)

    async def flush(self) -> None:
        """Send the wake-ups still waiting for their window, and wait for those on their way (closing)."""
        pending = [*self._trailing.items(), *self._due.items()]
        self._trailing, self._due = {}, {}
        self._pending.clear()
        for queue, handle in pending:
            handle.cancel()
            await self._deliver(queue)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1)

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()


class Pace:
    """The token buckets of one database, shared by every process on this host through a small
    file under the system's temporary directory, mapped into each process's memory: SLOTS records,
    one per queue by a hash of its name. time.monotonic() is the system's boot clock on Linux, the
    same in every process of the host.

    No lock: a record is read, changed and written back by plain memory copies, so no process ever
    waits for another (a process stopped halfway through holds nothing up). What a race can do:
    two processes that read one record at once both take its last token, or one writes back a
    "last sent" older than the other's; either sends a wake-up more, never one fewer, since a
    record only ever holds the times at which some process decided to send. A record torn by a
    concurrent write fails its checksum, as does one of another queue on the same slot or one
    from before a reboot (times ahead of now): each counts as a full bucket with nothing sent,
    which again can only send more. Any failure to open or map the file (no temporary directory,
    another user's directory) leaves the process pacing on its own."""

    SLOTS = 64
    RECORD = struct.Struct("<16sdddI")     # the queue's digest, tokens, counted, sent; a CRC-32 of the rest

    def __init__(self, database: str) -> None:
        self.key = hashlib.sha256(database.encode()).hexdigest()[:16]
        self.path: Path | None = None          # where it is, once opened (or set before that, in a test)
        self._map: mmap.mmap | None = None
        self._failed = False
        self._slots: dict[str, tuple[bytes, int]] = {}     # queue -> its digest and its record's offset

    def update(self, queue: str, burst: float,
               change: Callable[[Bucket], tuple[Bucket, T]]) -> tuple[Bucket, T] | None:
        """`change` applied to the queue's shared bucket, written back; None when it cannot be had."""
        shared = self._open()
        if shared is None:
            return None
        size = self.RECORD.size
        slot = self._slots.get(queue)
        if slot is None:
            digest = hashlib.blake2b(queue.encode(), digest_size=16).digest()
            slot = self._slots[queue] = (digest, (int.from_bytes(digest[:4], "little") % self.SLOTS) * size)
            if len(self._slots) > 4 * self.SLOTS:
                self._slots.clear()             # queue names made up on the fly: keep none for long
        digest, offset = slot
        data = shared[offset:offset + size]              # one copy: the checksum is of what was read
        held, tokens, counted, sent, check = self.RECORD.unpack(data)
        now = time.monotonic()
        bucket: Bucket = (burst, now, NEVER)
        if held == digest and check == zlib.crc32(data[:-4]) and _plausible(tokens, counted, sent, burst, now):
            bucket = (tokens, counted, sent)
        bucket, result = change(bucket)
        record = self.RECORD.pack(digest, *bucket, 0)[:-4]
        shared[offset:offset + size] = record + zlib.crc32(record).to_bytes(4, "little")
        return bucket, result

    def _open(self) -> mmap.mmap | None:
        if self._map is None and not self._failed:
            fd = -1
            try:
                if self.path is None:
                    self.path = wake_root() / f"{self.key}.pace"
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                stat = os.fstat(fd)
                if stat.st_uid != os.getuid():
                    raise PermissionError(f"{self.path} belongs to another user")
                length = self.SLOTS * self.RECORD.size
                if stat.st_size < length:      # only ever grown: a racing process grows it to the same size
                    os.ftruncate(fd, length)
                self._map = mmap.mmap(fd, length)
            except (OSError, ValueError) as exc:
                log.debug("wake-ups paced per process: %s", exc)
                self._failed = True
            finally:
                if fd >= 0:
                    os.close(fd)
        return self._map

    def close(self) -> None:
        if self._map is not None:
            shared, self._map = self._map, None
            shared.close()


def _plausible(tokens: float, counted: float, sent: float, burst: float, now: float) -> bool:
    """A record a process of this boot wrote (a file left from before a reboot holds times ahead of now)."""
    return (all(math.isfinite(value) for value in (tokens, counted, sent))
            and -DEBT <= tokens <= burst and counted <= now + 1 and sent <= now + 1)


def wake_root() -> Path:
    """This user's directory for wake-up files, under the system's temporary directory (every
    checkout of the project on the host meets there); made if missing, only the user's."""
    root = Path(tempfile.gettempdir()) / f"queue-wake-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        raise PermissionError(f"{root} belongs to another user")
    return root


class SocketBus:
    """Same-host wake-ups over UNIX datagram sockets, one directory per database: a worker process
    binds `<pid>-<random>.sock` there (`listen`), a dispatcher sends the queue's name to every
    socket in it (`send`). The directory is under the system's temporary directory, so every
    checkout of the project on the host meets there, and its paths stay within the 107 bytes a
    socket's path may have."""

    def __init__(self, database: str) -> None:
        key = hashlib.sha256(database.encode()).hexdigest()[:16]
        self.directory = Path(tempfile.gettempdir()) / f"queue-wake-{os.getuid()}" / key
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._peers: list[str] = []
        self._listed = (-1, 0.0)    # the directory's mtime when _peers was read, and when that was

    # -- the worker's side ------------------------------------------------------------------

    def listen(self, wakeups: Wakeups) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        path = self.directory / f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        for _ in range(3):      # the directory may be removed by the last worker leaving it, meanwhile
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                sock.bind(str(path))
                break
            except FileNotFoundError:
                continue
        else:
            sock.close()
            raise FileNotFoundError(f"cannot bind a socket in {self.directory}")
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._received, sock, wakeups)

    @staticmethod
    def _received(sock: socket.socket, wakeups: Wakeups) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                wakeups.wake(sock.recv(256).decode("utf-8", "replace") or ANY)

    # -- the dispatcher's side --------------------------------------------------------------

    async def send(self, queue: str) -> None:
        data = queue.encode()
        for path in self._listing():
            try:
                self._socket().sendto(data, path)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):      # its process is gone
                    os.unlink(path)
            except OSError:         # its buffer is full (a busy worker is awake anyway)
                pass

    def _socket(self) -> socket.socket:
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        return self._sender

    def _listing(self) -> list[str]:
        """The workers' sockets, listed again when the directory changed (one stat per send), and
        at least every second: an mtime ticks in steps of milliseconds, so a socket bound within
        the step of the last listing leaves it unchanged."""
        try:
            changed = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        now = time.monotonic()
        if changed != self._listed[0] or now - self._listed[1] > 1.0:
            self._listed = (changed, now)
            with contextlib.suppress(FileNotFoundError):
                self._peers = [entry.path for entry in os.scandir(self.directory) if entry.name.endswith(".sock")]
        return self._peers

    def close(self) -> None:
        if self._listener is not None:
            sock, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            with contextlib.suppress(OSError):
                os.unlink(sock.getsockname())
            sock.close()
            with contextlib.suppress(OSError):      # the last one out: no empty directory per database
                self.directory.rmdir()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
