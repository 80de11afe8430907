"""The Redis connection: Laravel's key layout, and every state change one Lua script (lua/*.lua).

Keys of one queue share the hash tag `{queue}`, so in Redis Cluster they sit in one slot and
every script touches one node:

    queues:{emails}            zset    ids of ready jobs, score = dispatch sequence (ZPOPMIN: FIFO)
    queues:{emails}:delayed    zset    ids of delayed jobs, score = due time
    queues:{emails}:reserved   zset    ids of reserved jobs, score = reservation expiry
    queues:{emails}:jobs       hash    <id> = payload, <id>:seq = "seq sec usec[ due]" (its place in
                                       dispatch order, the server's time of its push, its due time)
    queues:{emails}:state      hash    <id>:attempts, <id>:token, <id>:failing, <id>:releases of jobs
                                       tried at least once
    queues:{emails}:notify     list    one entry per ready job; idle workers block on it
    queues:{emails}:seq        string  counter giving each pushed job its place in dispatch order
    queues:{emails}:done       zset    ids finished within the replay window, score = when
    queues:{emails}:claim:<c>  string  the ids a reserve call with claim c took (expires after
                                       two visibility timeouts)

A job keeps its sequence number for life, so a delayed job coming due, a retry, or an expired
reservation goes back to its dispatch position: due jobs run in dispatch order, as on the
database connection.

The payload is stored as pushed and never re-encoded (it may be signed). A job's attempts and
reservation token live in the small `state` hash (jobs tried at least once), not beside the
payload: in a queue a million jobs deep every touch of the large jobs hash is a cache miss, and a
worker now touches it twice per job (the payload on reserve, the delete on acknowledge) instead of
seven times. (Jobs in flight across an upgrade from the older layout keep their old fields until
`queue:clear`; they are not lost.) A job's id is its payload's uuid: pushing a job that is stored,
or that finished within the replay window (the done zset), is a no-op, and `queue:retry` brings a
failed job back under its own id. Times come from the Redis server's clock (`TIME` inside the
scripts): one clock for every worker, as the database connection uses the database's.
Job middleware state (SPEC 9) is under `{lim:<key>}` keys: see state_redis.py.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.utils import HIREDIS_AVAILABLE

from core.config import RedisConfig, encoded_url
from core.errors import ConnectionFailed
from core.payload import peek_priority, peek_uuid
from core.queue.contract import QueueAdmin, QueueConnection, QueueSize, ReservedJob
from core.queue.failed import FailedJobStore
from core.queue.redis_lane import Lane
from core.queue.redis_status import RedisJobs
from core.queue.state_redis import RedisState

LUA = Path(__file__).resolve().parent / "lua"
SCRIPTS = ("push", "reserve", "acknowledge", "release", "extend", "mark_failing", "requeue", "size", "clear",
           "complete", "status", "cancel", "progress")
BATCH = 500               # due or expired jobs moved per reserve call; jobs deleted per clear step
PUSH_CHUNK = 1000         # jobs per push script call, so one call never blocks Redis for long
MAX_BLOCK = 5.0           # one blocking wait; below the socket timeout
WAIT_SLICE = 1.0          # one pipelined wait-and-reserve (one queue); a stopping worker waits at most this
SOCKET_TIMEOUT = 10.0
MAX_CONNECTIONS = 50       # per process; a call beyond them waits (up to SOCKET_TIMEOUT) for one to be free
CLUSTER_POLL = 0.05       # cluster, several queues: how often the queues after the first are looked at
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
ROW = 7                   # fields per job in a reserve answer: id, payload, attempts, failing, n, seq, releases
log = logging.getLogger("worker")


@dataclass(frozen=True)
class QueueKeys:
    ready: str
    delayed: str
    reserved: str
    jobs: str
    notify: str
    seq: str
    state: str
    done: str
    results: str          # SPEC 11: <id> = a finished job's record (redis_status.py)
    results_exp: str      # id = when its record expires
    wake: str             # <wake><id>: a list a waiter blocks on until the job finished

    @classmethod
    def of(cls, prefix: str, queue: str) -> "QueueKeys":
        base = f"{prefix}{{{queue}}}"
        return cls(base, f"{base}:delayed", f"{base}:reserved", f"{base}:jobs", f"{base}:notify", f"{base}:seq",
                   f"{base}:state", f"{base}:done", f"{base}:results", f"{base}:results:exp", f"{base}:wake:")

    def claim(self, claim: str) -> str:
        return f"{self.ready}:claim:{claim}"

    def for_reserve(self, claim: str | None) -> list[str]:
        keys = [self.ready, self.delayed, self.reserved, self.jobs, self.notify, self.state, self.done]
        return keys if claim is None else [*keys, self.claim(claim)]


def address(config: RedisConfig) -> str:
    """host:port the connection goes to, for messages (never the password)."""
    if config.url:
        parts = urlsplit(encoded_url(config.url))    # a password's '#', '/' or '?' cannot pass for the host
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
    return f"{config.host}:{config.port}"


def is_cluster(config: RedisConfig) -> bool:
    return config.cluster or urlsplit(config.url).scheme in CLUSTER_SCHEMES


class _HiredisPacking:
    """Commands packed by hiredis (C) through redis-py's own HiredisRespSerializer, as redis-py's
    sync client does when hiredis is installed; its asyncio client packs in Python, which was
    about a tenth of a dispatch's time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from redis.connection import HiredisRespSerializer

        self._serializer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        try:
            return self._serializer.pack(*args)
        except UnicodeEncodeError:      # text that came in as bytes that are not UTF-8: the
            # client's own encoder (surrogateescape) sends them back; super() is the Connection mixed in
            return super().pack_command(*args)  # type: ignore[misc]


HIREDIS_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {
    base: type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
    for base in (Connection, SSLConnection, UnixDomainSocketConnection)} if HIREDIS_AVAILABLE else {}


class FairConnectionPool(BlockingConnectionPool):
    """A BlockingConnectionPool whose callers get connections in the order they asked.

    redis-py's hands a freed connection to whoever asks next: a waiter it wakes (a Condition)
    loses to callers arriving meanwhile, so under a burst beyond max_connections (100 concurrent
    dispatches) some waited past QUEUE_DISPATCH_TIMEOUT and failed while others went through. A
    turn (a FIFO semaphore of max_connections) is taken before the pool is asked and given back
    with the connection, so the pool itself never makes anyone wait."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns: asyncio.Semaphore | None = None
        self._turns_loop: asyncio.AbstractEventLoop | None = None

    def _turn(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._turns is None or self._turns_loop is not loop:     # a semaphore serves one event loop
            self._turns, self._turns_loop = asyncio.Semaphore(self.max_connections), loop
        return self._turns

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        turns = self._turn()
        try:
            async with asyncio.timeout(self.timeout):
                await turns.acquire()
        except TimeoutError:
            raise redis_errors.ConnectionError("No connection available.") from None
        try:
            return await super().get_connection(*args, **kwargs)
        except BaseException:
            turns.release()
            raise

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            if self._turns is not None and self._turns_loop is asyncio.get_running_loop():
                self._turns.release()


def make_client(config: RedisConfig) -> Redis | RedisCluster:
    """A redis-py asyncio client from REDIS_URL (redis://, rediss://, redis+cluster://) or REDIS_*."""
    # A dropped connection is retried at once on a fresh one; a timeout is not: a server that does
    # not answer within SOCKET_TIMEOUT is likely cut off, and three more waits would only delay
    # the caller's own handling (a worker's backoff, a dispatch's QUEUE_DISPATCH_TIMEOUT).
    # surrogateescape: bytes that are not UTF-8 (written by someone else) still decode, and encode back to
    # the same key, so such a job is reserved, recorded as failed and deleted instead of failing every reserve.
    options: dict[str, Any] = dict(
        decode_responses=True, encoding_errors="surrogateescape", socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3,
                    supported_errors=(redis_errors.ConnectionError,)),
        password=config.password or None)
    url = encoded_url(config.url) if config.url else ""     # redis-py reads the password percent-encoded
    if url:
        scheme, _, rest = url.partition("://")
        url = f"{CLUSTER_SCHEMES.get(scheme, scheme)}://{rest}"
    if is_cluster(config):
        if url:
            return RedisCluster.from_url(url, **options)
        return RedisCluster(host=config.host, port=config.port, **options)
    # A pool that waits for a free connection: redis-py 8's default pool raises "Too many
    # connections" at its 100th concurrent call, so a burst of dispatches would fail.
    pool_options = dict(options, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT)
    if url:
        pool = FairConnectionPool.from_url(url, db=config.db, **pool_options)  # the URL's own password and db win
    else:
        pool = FairConnectionPool(host=config.host, port=config.port, db=config.db, **pool_options)
    pool.connection_class = HIREDIS_PACKING.get(pool.connection_class, pool.connection_class)
    return Redis.from_pool(pool)      # closes the pool with the client; connects at the first command


def reason(exc: BaseException) -> str:
    """The short cause of a connection error: 'Connection refused', not redis-py's whole sentence."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):   # an unknown host: errno -2, which os.strerror cannot name
            return cause.strerror or str(cause)
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__ or cause.__context__
    text = str(exc).strip().rstrip(".")
    if "Connect call failed" in text or "Connection refused" in text:   # the cluster client keeps only the text
        return os.strerror(errno.ECONNREFUSED)
    return text or type(exc).__name__


class RedisQueue(RedisJobs, QueueConnection, QueueAdmin):
    name = "redis"
    pushes_in_flight = 1        # one push.lua call at a time per queue, carrying what came meanwhile

    def __init__(self, config: RedisConfig, failed: Callable[[], Awaitable[FailedJobStore]],
                 visibility_timeout: int = 90, replay_window: int = 900) -> None:
        self.config = config
        # How to open the failed-job store (QueueManager.failed_store, which keeps it once open): a
        # connection opened for pushes and renewals (a dispatcher, a worker's heartbeat) does not wait
        # for the database that keeps failed_jobs.
        self.failed = failed
        self.visibility_timeout = visibility_timeout
        self.replay_window = max(0, int(replay_window))
        self.cluster = is_cluster(config)
        self.client: Redis | RedisCluster | None = None
        self._scripts: dict[str, Any] = {}
        self._lane: Lane | None = None
        self._lane_two: Lane | None = None      # for a call made while the first is busy
        self._keys: dict[str, QueueKeys] = {}
        self._state: RedisState | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def failed_store(self) -> FailedJobStore:
        """failed_jobs, opened on first need: a heartbeat that opened its connection while that database
        was away could renew nothing until it came back, and the jobs it held lapsed and ran twice."""
        return await self.failed()

    async def open(self) -> None:
        client = make_client(self.config)
        try:
            if isinstance(client, RedisCluster):
                await client.initialize()
            await client.ping()
        except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
            await _close_quietly(client)
            message = f"Cannot connect to Redis at {address(self.config)}: {reason(exc)}"
            if self.config.password:
                message = message.replace(self.config.password, "***")
            raise ConnectionFailed(message) from None
        self.client = client
        # Registered once; redis-py sends EVALSHA and reloads a script the server forgot (a restart).
        self._scripts = {name: client.register_script((LUA / f"{name}.lua").read_text()) for name in SCRIPTS}
        self._scripts["acknowledge_reserve"] = client.register_script(in_sequence("acknowledge", "reserve"))
        if not isinstance(client, RedisCluster):   # a cluster client routes each call to its node: no single one
            self._lane = Lane(client)
            self._lane_two = Lane(client)
        self._state = RedisState(client, self.config.prefix)

    @property
    def _redis(self) -> Redis | RedisCluster:
        if self.client is None:
            raise RuntimeError("the Redis connection is not open")
        return self.client

    @property
    def state(self) -> RedisState:
        if self._state is None:
            raise RuntimeError("the Redis connection is not open")
        return self._state

    async def close(self) -> None:
        lanes, self._lane, self._lane_two = [self._lane, self._lane_two], None, None
        for lane in lanes:
            if lane is None:
                continue
            try:
                await lane.close()
            except (redis_errors.RedisError, OSError, RuntimeError):
                pass
        if self.client is not None:
            client, self.client = self.client, None
            await _close_quietly(client)

    def describe(self) -> str:
        return f"Redis at {address(self.config)}"

    def connection_error(self, exc: BaseException) -> str | None:
        # ConnectionError covers a server still loading its data; ClusterDownError a failover.
        if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError,
                            OSError)):
            return reason(exc)
        return None

    def keys(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            if len(self._keys) >= 1000:     # queue names are few; a flood of new ones is not kept
                self._keys.clear()
            keys = self._keys[queue] = QueueKeys.of(self.config.prefix, queue)
        return keys

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        lane = self._lane
        if lane is not None:
            if lane.busy and self._lane_two is not None:
                lane = self._lane_two
            return await lane.run(self._scripts[script], keys, args)
        return await self._scripts[script](keys=list(keys), args=list(args))

    # -- pushing ---------------------------------------------------------------------------------

    async def push(self, queue: str, payload: str, delay: float = 0) -> None:
        k = self.keys(queue)
        args = [max(0.0, float(delay)), peek_uuid(payload) or str(uuid.uuid4()), payload]
        priority = peek_priority(payload)
        if priority:
            args.append(priority)
        await self._run("push", [k.ready, k.delayed, k.jobs, k.notify, k.seq, k.done], args)

    async def push_many(self, queue: str, payloads: Sequence[str], delay: float = 0) -> None:
        k = self.keys(queue)
        for start in range(0, len(payloads), PUSH_CHUNK):
            chunk = payloads[start:start + PUSH_CHUNK]
            priorities = [peek_priority(payload) for payload in chunk]
            args: list[Any] = [max(0.0, float(delay))]
            if any(priorities):      # push.lua's ranked form: "r<delay>", then (id, payload, priority) triples
                args[0] = f"r{args[0]}"
                for payload, priority in zip(chunk, priorities):
                    args += [peek_uuid(payload) or str(uuid.uuid4()), payload, priority]
            else:
                for payload in chunk:
                    args += [peek_uuid(payload) or str(uuid.uuid4()), payload]
            await self._run("push", [k.ready, k.delayed, k.jobs, k.notify, k.seq, k.done], args)

    async def requeue(self, queue: str, payload: str, delay: float = 0, job_id: str | None = None) -> None:
        """queue:retry: forget the finished record and store the job again, or take it over from a
        worker still failing it (requeue.lua): attempts reset, failing mark and token cleared."""
        k = self.keys(queue)
        await self._run("requeue", [k.ready, k.delayed, k.reserved, k.jobs, k.notify, k.seq, k.state, k.done],
                        [peek_uuid(payload) or job_id or str(uuid.uuid4()), payload, peek_priority(payload),
                         max(0.0, float(delay))])

    # -- reserving -------------------------------------------------------------------------------

    async def reserve(self, queues: Sequence[str], claim: str | None = None) -> ReservedJob | None:
        jobs, _ = await self._reserve(queues, 1, claim)
        return jobs[0] if jobs else None

    async def reserve_many(self, queues: Sequence[str], limit: int, claim: str | None = None) -> list[ReservedJob]:
        jobs, _ = await self._reserve(queues, limit, claim)
        return jobs

    async def _reserve(self, queues: Sequence[str], limit: int,
                       claim: str | None = None) -> tuple[list[ReservedJob], float | None]:
        """Up to `limit` due jobs, first queue first; if none, the seconds until something may come due."""
        wake: float | None = None
        taken: list[ReservedJob] = []
        for queue in queues:
            stem = claim or secrets.token_hex(8)
            result = await self._run("reserve", self.keys(queue).for_reserve(claim),
                                     [self.visibility_timeout, stem, BATCH, limit - len(taken)])
            jobs, due_in = self._answer(queue, stem, result)
            if jobs:
                taken += jobs
                if len(taken) >= limit:
                    break
            elif due_in is not None:
                wake = due_in if wake is None else min(wake, due_in)
        return taken, (None if taken else wake)

    async def reserve_wait(self, queues: Sequence[str], timeout: float, interrupt: asyncio.Event | None = None,
                           claim: str | None = None) -> ReservedJob | None:
        """Reserve, or block on the queues' notify lists until a job is pushed (or comes due)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        if len(queues) == 1 and not self.cluster:
            return await self._wait_one(queues[0], deadline, interrupt, claim)
        woken_by: str | None = None
        while True:
            jobs, wake = await self._reserve(queues, 1, claim)
            job = jobs[0] if jobs else None
            if job is not None:
                if woken_by is not None and woken_by != job.queue:
                    # Woken for another queue but took a job of a higher one: pass the signal on.
                    await self._redis.rpush(self.keys(woken_by).notify, 1)
                return job
            remaining = deadline - loop.time()
            if remaining <= 0 or (interrupt is not None and interrupt.is_set()):
                return None
            block = min(remaining, MAX_BLOCK, wake if wake is not None else MAX_BLOCK)
            woken_by = await self._block(queues, max(block, 0.01), interrupt)

    async def _wait_one(self, queue: str, deadline: float, interrupt: asyncio.Event | None,
                        claim: str | None) -> ReservedJob | None:
        """One queue: BLPOP and the reserve script sent together, so Redis runs the reserve the
        moment a push wakes the BLPOP, with no round trip back to the worker in between.

        Nothing here is cancelled on interrupt (a cancelled pipeline could leave a job reserved
        that the worker never saw, its attempt counted): the wait is cut into WAIT_SLICE pieces
        and `interrupt` is looked at between them."""
        loop = asyncio.get_running_loop()
        jobs, wake = await self._reserve([queue], 1, claim)
        keys = self.keys(queue).for_reserve(claim)
        script = self._scripts["reserve"]
        while not jobs:
            remaining = deadline - loop.time()
            if remaining <= 0 or (interrupt is not None and interrupt.is_set()):
                return None
            block = max(0.01, min(remaining, WAIT_SLICE, wake if wake is not None else WAIT_SLICE))
            stem = claim or secrets.token_hex(8)
            pipe = self._redis.pipeline(transaction=False)
            pipe.blpop([self.keys(queue).notify], timeout=block)
            # EVALSHA directly: through the Script object the pipeline would ask SCRIPT EXISTS first.
            pipe.evalsha(script.sha, len(keys), *keys, self.visibility_timeout, stem, BATCH, 1)
            try:
                _, result = await pipe.execute()
            except redis_errors.NoScriptError:          # the server lost its scripts (a restart)
                await script.registered_client.script_load(script.script)
                continue
            jobs, wake = self._answer(queue, stem, result)
        return jobs[0]

    # A worker above concurrency 1 sends the acknowledgements it held while every slot was busy right
    # after its reserve, on the second lane: the server answers the reserve first and deletes the
    # finished jobs while the worker starts the next ones (carried in the reserve's own call, the
    # deletes would come first and the worker would wait for them).
    held_acknowledgements = "after"

    async def acknowledge_and_reserve(self, jobs: Sequence[ReservedJob], queue: str,
                                      claim: str, limit: int = 1) -> tuple[list[bool], list[ReservedJob]]:
        """Acknowledge finished jobs of `queue` and reserve up to `limit` of its next jobs, in one
        round trip and one script call (a worker spends a round trip on each otherwise):
        acknowledge.lua then reserve.lua, run in sequence by one script (in_sequence). Never blocks:
        [] when no job is due (the caller then waits as it would)."""
        if self.cluster or any(job.queue != queue for job in jobs):
            return await self.acknowledge_many(jobs), (await self._reserve([queue], limit, claim))[0]
        ack_keys, ack_args = self._acknowledge_call(queue, jobs)
        keys = self.keys(queue).for_reserve(claim)
        flags, result = await self._run("acknowledge_reserve", [*ack_keys, *keys],
                                        [len(ack_keys), len(ack_args), *ack_args,
                                         self.visibility_timeout, claim, BATCH, limit])
        return [flag == 1 for flag in flags], self._rows(queue, claim, result)

    def send_acknowledge_and_reserve(self, jobs: Sequence[ReservedJob], queue: str, claim: str
                                     ) -> Callable[[], Awaitable[tuple[list[bool], list[ReservedJob]]]] | None:
        """acknowledge_and_reserve's call written to the store now, its answer read when the caller
        awaits what this returns: a worker at concurrency 1 sends it the moment a job finished and
        winds the job down while the call is on its way. None (nothing sent) when it cannot go out at
        once: then call acknowledge_and_reserve."""
        if self._lane is None or any(job.queue != queue for job in jobs):
            return None
        ack_keys, ack_args = self._acknowledge_call(queue, jobs)
        sent = self._lane.send(self._scripts["acknowledge_reserve"], [*ack_keys, *self.keys(queue).for_reserve(claim)],
                               [len(ack_keys), len(ack_args), *ack_args, self.visibility_timeout, claim, BATCH, 1])
        if sent is None:
            return None

        async def answer() -> tuple[list[bool], list[ReservedJob]]:
            flags, result = await sent.answer()
            return [flag == 1 for flag in flags], self._rows(queue, claim, result)
        return answer

    def _answer(self, queue: str, stem: str, result: list) -> tuple[list[ReservedJob], float | None]:
        """A reserve script's answer: the jobs it took, else the seconds until one may come due."""
        jobs = self._rows(queue, stem, result)
        if jobs or not result[1]:
            return jobs, None
        return [], max(0.0, float(result[1]))

    def _rows(self, queue: str, stem: str, result: list) -> list[ReservedJob]:
        """The jobs of a reserve answer ({count, now, id, payload, attempts, failing, n, pushed,
        releases, ...} or {false, wake}); ids after them are jobs dropped as already finished: logged."""
        count = int(result[0] or 0)
        for job_id in result[2 + count * ROW:]:
            log.warning("%s already ran; a repeated push of it was dropped", job_id)
        now = _seconds(*result[1].split(" ")) if count else 0.0
        return [_reserved(queue, stem, now, result[i:i + ROW]) for i in range(2, 2 + count * ROW, ROW)]

    async def recover(self, queues: Sequence[str], claim: str) -> list[ReservedJob]:
        """reserve.lua with the claim and a limit of 0: the jobs that call still holds, renewed."""
        jobs: list[ReservedJob] = []
        for queue in queues:
            result = await self._run("reserve", self.keys(queue).for_reserve(claim),
                                     [self.visibility_timeout, claim, BATCH, 0])
            jobs += self._rows(queue, claim, result)
        return jobs

    async def _block(self, queues: Sequence[str], seconds: float, interrupt: asyncio.Event | None = None) -> str | None:
        """Wait for a notify entry; returns the queue it came from, None on timeout or interrupt.

        Cancelling a BLPOP on interrupt is safe: it only takes wake-up entries, which every
        reserve brings back in line with the ready jobs."""
        if self.cluster and len(queues) > 1:
            # Keys of different slots cannot share one BLPOP: block on the first queue briefly.
            seconds = min(seconds, CLUSTER_POLL)
            queues = queues[:1]
        notify = {self.keys(q).notify: q for q in queues}
        if interrupt is None:
            popped = await self._redis.blpop(list(notify), timeout=seconds)
        else:
            pop = asyncio.ensure_future(self._redis.blpop(list(notify), timeout=seconds))
            stop = asyncio.ensure_future(interrupt.wait())
            await asyncio.wait({pop, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not pop.done():
                pop.cancel()
                return None
            popped = pop.result()
        return notify[cast(str, popped[0])] if popped else None     # decode_responses: keys come back as str

    # -- finishing -------------------------------------------------------------------------------

    async def acknowledge(self, job: ReservedJob) -> bool:
        [done] = await self.acknowledge_many([job])
        return done

    async def acknowledge_many(self, jobs: Sequence[ReservedJob]) -> list[bool]:
        """One script call per queue; the answers come back in the order of `jobs`."""
        def acknowledge(queue: str, indexes: list[int]) -> Awaitable[list]:
            return self._run("acknowledge", *self._acknowledge_call(queue, [jobs[i] for i in indexes]))
        return await self.each_queue(jobs, acknowledge)

    def _acknowledge_call(self, queue: str, jobs: Sequence[ReservedJob]) -> tuple[list[str], list[Any]]:
        """acknowledge.lua's keys and arguments for finished jobs of one queue."""
        k = self.keys(queue)
        return ([k.reserved, k.jobs, k.seq, k.state, k.done],
                [self.replay_window, *(part for job in jobs for part in (job.id, job.token))])

    async def release(self, job: ReservedJob, delay: float = 0, *, free: bool = False,
                      error: str | None = None) -> bool:
        k = self.keys(job.queue)
        args = [job.id, job.token, max(0.0, float(delay)), int(free)]
        if error is not None:
            args.append(error[:1000])
        return await self._run("release", [k.ready, k.delayed, k.reserved, k.jobs, k.notify, k.state], args) == 1

    async def release_failed(self, job: ReservedJob, delay: float, error: str) -> bool:
        return await self.release(job, delay, error=error)

    async def unreserve(self, job: ReservedJob) -> bool:
        """Put back a job this worker reserved but never started (it was stopping): it waits at its
        place again with its attempt taken back, as if never reserved. False if the reservation was lost."""
        k = self.keys(job.queue)
        return await self._run("release", [k.ready, k.delayed, k.reserved, k.jobs, k.notify, k.state],
                               [job.id, job.token, 0, -1]) == 1

    async def mark_failing(self, job: ReservedJob, exception: str, failed_ran: bool = False) -> bool:
        k = self.keys(job.queue)
        return await self._run("mark_failing", [k.reserved, k.state],
                               [self.visibility_timeout, job.id, job.token, int(bool(failed_ran)), exception]) == 1

    async def fail(self, job: ReservedJob, exception: str) -> bool:
        """Record in failed_jobs first, then delete: no path removes a job that is not recorded.

        The reservation is renewed first, which also checks it is still ours and keeps it ours
        while the row is written; only then is the job deleted (token-checked, acknowledge.lua,
        which also remembers it as finished). A requeue in between takes the job over: the
        delete then does nothing and the job stays queued.
        """
        if not (await self._extend_queue(job.queue, [job]))[0]:
            return False
        await (await self.failed_store()).record(self.name, job.queue, job.payload, exception, attempts=job.attempts,
                                                 job_id=job.id)
        return await self.acknowledge(job)

    async def extend(self, jobs: Sequence[ReservedJob]) -> list[str]:
        by_queue: dict[str, list[ReservedJob]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job)
        cancelled: list[str] = []
        for queue, held in by_queue.items():
            cancelled += (await self._extend_queue(queue, held))[1:]
        return cancelled

    async def _extend_queue(self, queue: str, jobs: Sequence[ReservedJob]) -> list:
        """extend.lua's answer: {renewed, ids of renewed jobs someone cancelled...}."""
        k = self.keys(queue)
        args: list[Any] = [self.visibility_timeout]
        for job in jobs:
            args += [job.id, job.token]
        return await self._run("extend", [k.reserved, k.state], args)

    # -- inspecting ------------------------------------------------------------------------------

    async def sizes(self, queues: Sequence[str] | None = None) -> dict[str, QueueSize]:
        names = list(queues) if queues else await self._queues_with_jobs()
        result = {}
        for queue in names:
            k = self.keys(queue)
            pending, delayed, reserved = await self._run("size", [k.ready, k.delayed, k.reserved], [])
            result[queue] = QueueSize(int(pending), int(delayed), int(reserved))
        return result

    async def _queues_with_jobs(self, tail: str = "}:jobs") -> list[str]:
        """Queues whose jobs hash (or, with tail "}:results", results hash) exists: it is deleted
        with its last job. SCAN: commands only."""
        head = f"{self.config.prefix}{{"
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in head) + "*" + tail
        found = set()
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            if key.startswith(head) and key.endswith(tail):
                found.add(key[len(head):-len(tail)])
        return sorted(found)

    async def clear(self, queue: str) -> int:
        k = self.keys(queue)
        total = 0
        while True:
            count = int(await self._run("clear", [k.ready, k.delayed, k.jobs, k.notify, k.seq, k.state, k.done,
                                                    k.reserved], [BATCH, self.replay_window]))
            total += count
            if count < BATCH:
                return total

    # -- restart signal --------------------------------------------------------------------------

    async def request_restart(self) -> None:
        # A counter, not a time: workers compare it for a change, so skewed clocks agree. INCRBYFLOAT
        # rather than INCR: the key may still hold a time written by an earlier release.
        await self._redis.incrbyfloat(f"{self.config.prefix}restart", 1)

    async def restart_signal(self) -> str:
        return cast(str, await self._redis.get(f"{self.config.prefix}restart") or "")   # decode_responses


def in_sequence(*names: str) -> str:
    """One script that runs the named scripts (lua/<name>.lua) one after the other, each as it is,
    and answers {answer1, answer2, ...}: one EVALSHA instead of one per script.

    Each script's text becomes the body of a function whose parameters are named KEYS and ARGV, so
    it reads its own keys and arguments as it would alone. The call gives, for each script but the
    last, how many keys and arguments are its (ARGV[1], ARGV[2] for the first, and so on), then the
    arguments themselves; the last takes the rest.
    """
    parts = [f"local function {name}(KEYS, ARGV)\n{(LUA / f'{name}.lua').read_text()}\nend\n" for name in names]
    glue = f"""
local counts, key_at, arg_at, answers = {len(names) - 1}, 0, 2 * {len(names) - 1}, {{}}
local function slice(list, from, to)
    local part = {{}}
    for i = from, to do part[#part + 1] = list[i] end
    return part
end
local scripts = {{{", ".join(names)}}}
for n = 1, #scripts do
    local nk, na = #KEYS - key_at, #ARGV - arg_at
    if n <= counts then nk, na = tonumber(ARGV[2 * n - 1]), tonumber(ARGV[2 * n]) end
    answers[n] = scripts[n](slice(KEYS, key_at + 1, key_at + nk), slice(ARGV, arg_at + 1, arg_at + na))
    key_at, arg_at = key_at + nk, arg_at + na
end
return answers
"""
    return "".join(parts) + glue


def _reserved(queue: str, stem: str, now: float, row: Sequence) -> ReservedJob:
    """A ReservedJob from a reserve answer's row: id, payload, attempts, failing, n, <id>:seq, releases."""
    job_id, payload, attempts, failing, n, pushed, releases = row
    _, sec, usec, *due = pushed.split(" ")
    pushed_at = int(sec) + int(usec) / 1_000_000      # _seconds(), inlined: once per job reserved
    return ReservedJob(id=job_id, queue=queue, payload=payload, attempts=int(attempts), token=f"{stem}:{n}",
                       failing=_text(failing), failed_ran=(failing or "")[:1] == "1", releases=int(releases or 0),
                       pushed_at=pushed_at, due_at=float(due[0]) if due else pushed_at, now=now)


def _seconds(sec: str, usec: str) -> float:
    """A time as Redis TIME gives it (whole seconds, microseconds) in seconds."""
    return int(sec) + int(usec) / 1_000_000


def _text(failing: str | None) -> str | None:
    """The exception text of a failing mark ('0' or '1' for failed_ran, then the text)."""
    return None if failing is None else failing[1:]


async def _close_quietly(client: Redis | RedisCluster) -> None:
    try:
        await client.aclose()
    except (redis_errors.RedisError, OSError, RuntimeError):
        pass
