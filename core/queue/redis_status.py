"""SPEC 11 on Redis: results kept with the acknowledgement, a job's status, cancelling, listing.

    queues:{q}:results       hash    <id> = a finished job's record (JSON: state, job, attempts, result...)
    queues:{q}:results:exp   zset    id = when its record expires (trimmed by complete.lua, prune_results)
    queues:{q}:wake:<id>     list    pushed when the job finishes; a waiter BLPOPs it (a round trip, not a poll)

Only jobs that keep a result (or are cancelled) write these: a default job's path is unchanged.
A mixin of RedisQueue (redis.py): it uses its keys, scripts and failed-job store.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.queue.contract import KeptResult, ReservedJob
from core.queue.status import CANCEL_KEEP, JobStatus, parse_progress, from_failed, from_payload, from_record

if TYPE_CHECKING:
    from core.queue.failed import FailedJobStore
    from core.queue.redis import QueueKeys

# The states queue:jobs lists from the queue's sorted sets, and those it lists from the kept records;
# the rest of SPEC's (waiting, superseded) this store never holds.
QUEUED = ("reserved", "pending", "delayed")
RECORDED = ("completed", "cancelled", "skipped")


class RedisJobs:
    replay_window: int
    client: Any

    async def failed_store(self) -> "FailedJobStore":
        raise NotImplementedError

    def keys(self, queue: str) -> "QueueKeys":
        raise NotImplementedError

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        raise NotImplementedError

    async def _queues_with_jobs(self, tail: str = "}:jobs") -> list[str]:
        raise NotImplementedError

    async def each_queue(self, jobs: Sequence[ReservedJob],
                         run: Callable[[str, list[int]], Awaitable[list]]) -> list[bool]:
        """`run(queue, indexes)` once per queue of `jobs` (its script's flags, 1: done); the answers in
        the order of `jobs`. Keys of one queue share a slot: one script per queue, also in a cluster."""
        by_queue: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            by_queue.setdefault(job.queue, []).append(i)
        done = [False] * len(jobs)
        for queue, indexes in by_queue.items():
            for i, flag in zip(indexes, await run(queue, indexes)):
                done[i] = flag == 1
        return done

    async def complete_many(self, jobs: Sequence[ReservedJob], results: Sequence[KeptResult]) -> list[bool]:
        """complete.lua, one call per queue; the answers in the order of `jobs`."""
        def complete(queue: str, indexes: list[int]) -> Awaitable[list]:
            k = self.keys(queue)
            args: list[Any] = [self.replay_window, k.wake]
            for i in indexes:
                args += [jobs[i].id, jobs[i].token, results[i].record, results[i].keep]
            return self._run("complete", [k.reserved, k.jobs, k.seq, k.state, k.done, k.results, k.results_exp], args)
        return await self.each_queue(jobs, complete)

    async def _queues(self, queue: str | None) -> list[str]:
        if queue:
            return [queue]
        return sorted(set(await self._queues_with_jobs()) | set(await self._queues_with_jobs("}:results")))

    async def job_status(self, queue: str | None, job_id: str) -> JobStatus | None:
        for name in await self._queues(queue):
            status = await self._status_in(name, job_id)
            if status is not None:
                return status
        failed = await (await self.failed_store()).find(job_id)
        return from_failed(failed) if failed is not None else None

    async def _status_in(self, queue: str, job_id: str) -> JobStatus | None:
        k = self.keys(queue)
        row = await self._run("status", [k.ready, k.delayed, k.reserved, k.jobs, k.state, k.results, k.results_exp],
                              [job_id])
        if not row:
            return None
        if row[0] == "record":
            return from_record(job_id, row[1])
        state, payload, attempts, at, error, progress, now = row
        return from_payload(job_id, state, queue, payload, attempts=int(attempts),
                            available_at=float(at) if at and state == "delayed" else None, last_error=error or None,
                            progress=parse_progress(progress))

    async def cancel_job(self, queue: str | None, job_id: str) -> str:
        for name in await self._queues(queue):
            k = self.keys(name)
            done = await self._run("cancel", [k.ready, k.delayed, k.reserved, k.jobs, k.state, k.results,
                                              k.results_exp, k.done], [job_id, CANCEL_KEEP, k.wake, self.replay_window])
            if done:
                return str(done)
        status = await self.job_status(queue, job_id)
        return "unknown" if status is None else status.state

    async def await_change(self, queue: str | None, job_id: str, seconds: float) -> None:
        if not queue:
            return await super().await_change(queue, job_id, seconds)    # type: ignore[misc]
        key = self.keys(queue).wake + job_id
        if await self.client.blpop([key], timeout=max(0.01, seconds)):
            await self.client.rpush(key, 1)      # for any other waiter on the same job

    async def cancelled_among(self, jobs: Sequence[ReservedJob]) -> list[str]:
        """The held jobs someone asked to cancel (cancel.lua flagged them): one HMGET per queue.
        The worker learns it from extend() instead, with the renewal it makes anyway."""
        found: list[str] = []
        by_queue: dict[str, list[str]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, []).append(job.id)
        for queue, ids in by_queue.items():
            flags = await self.client.hmget(self.keys(queue).state, [f"{job_id}:cancel" for job_id in ids])
            found += [job_id for job_id, flag in zip(ids, flags) if flag]
        return found

    async def set_progress(self, job: ReservedJob, fraction: float, text: str) -> bool:
        return await self._run("progress", [self.keys(job.queue).state],
                               [job.id, job.token, f"{fraction:g} {text}"[:1000]]) == 1

    async def jobs(self, queue: str | None, state: str | None, limit: int) -> list[JobStatus]:
        """ZRANGE on the state's sorted set (the results' by expiry): cost bounded by `limit`."""
        found: list[JobStatus] = []
        if state == "failed":
            return [from_failed(f) for f in await (await self.failed_store()).latest(limit, queue)]
        if state is not None and state not in QUEUED + RECORDED:
            return []
        states = [state] if state else list(QUEUED)
        seconds, micros = await self.client.time()      # the server's clock: due or not, as status.lua judges
        now = seconds + micros / 1e6
        for name in await self._queues(queue):
            k = self.keys(name)
            for wanted in states:
                for job_id in await self._listed(k, wanted, max(1, limit - len(found)) * 2, now):
                    status = await self._status_in(name, job_id)
                    if status is not None and (state is None or status.state == wanted):
                        found.append(status)
                    if len(found) >= limit:
                        return found
        return found

    async def _listed(self, k: Any, state: str, count: int, now: float) -> list[str]:
        """Up to about `count` ids to look at for `state`. A delayed job whose time came (by `now`), and a
        reserved one whose reservation lapsed (a dead worker's), are pending (status.lua says so) until a
        reserve takes them: pending reads all three."""
        if state in RECORDED:
            return list(await self.client.zrange(k.results_exp, 0, count))
        if state == "reserved":
            return list(await self.client.zrangebyscore(k.reserved, f"({now}", "+inf", start=0, num=count))
        if state == "delayed":
            return list(await self.client.zrangebyscore(k.delayed, f"({now}", "+inf", start=0, num=count))
        return [*await self.client.zrange(k.ready, 0, count),
                *await self.client.zrangebyscore(k.delayed, "-inf", now, start=0, num=count),
                *await self.client.zrangebyscore(k.reserved, "-inf", now, start=0, num=count)]

    async def prune_results(self) -> int:
        import time

        total = 0
        for name in await self._queues_with_jobs("}:results"):
            k = self.keys(name)
            old = await self.client.zrangebyscore(k.results_exp, "-inf", time.time())
            if old:
                await self.client.zrem(k.results_exp, *old)
                await self.client.hdel(k.results, *old)
            total += len(old)
        return total

