"""RQ on Redis db 12: `Queue.enqueue` one at a time and `Queue.enqueue_many` (one pipeline);
`rq worker -w rq.worker.SimpleWorker` (one job at a time, no fork per job; RQ has no concurrency
setting within one worker process)."""
from __future__ import annotations

import time

from redis import Redis
from rq import Queue

from bench.harness import PEER_DB, Target, WorkerConfig, redis_url
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick


def noop() -> None:
    tick()


def probe(sent: float) -> None:
    record_latency(sent)


class Rq(Target):
    name = "rq"
    version = package_version("rq")
    bulk_label = "enqueue_many"
    enqueue_label = "queue.enqueue()"

    def __init__(self) -> None:
        self.queue = Queue("default", connection=Redis.from_url(redis_url(PEER_DB)))

    def connect(self) -> None:
        self.queue.connection.ping()

    def enqueue(self, n: int) -> None:
        for _ in range(n):
            self.queue.enqueue("bench.peers.rq.noop")

    def enqueue_bulk(self, n: int) -> None:
        self.queue.enqueue_many([Queue.prepare_data("bench.peers.rq.noop") for _ in range(n)])

    def send_probe(self) -> None:
        self.queue.enqueue("bench.peers.rq.probe", time.time())

    def _worker(self, *options: str) -> list[str]:
        return [tool("rq"), "worker", "--url", redis_url(PEER_DB), "-w", "rq.worker.SimpleWorker", *options, "default"]

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig("SimpleWorker --burst", self._worker("--burst"), exits_when_empty=True)]

    def latency_worker(self) -> WorkerConfig:
        return WorkerConfig("SimpleWorker", self._worker())


def make_target() -> Rq:
    return Rq()
