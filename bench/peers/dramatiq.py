"""Dramatiq with its Redis broker on db 12: `actor.send()` one at a time (no bulk call); the
`dramatiq` CLI with --processes 1 (one worker process besides its parent) and --threads 1, 10 and
100 (jobs at once; its default is 8, used for latency)."""
from __future__ import annotations

import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.harness import PEER_DB, Target, WorkerConfig, redis_url
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

broker = RedisBroker(url=redis_url(PEER_DB))
dramatiq.set_broker(broker)


@dramatiq.actor
def noop() -> None:
    tick()


@dramatiq.actor
def probe(sent: float) -> None:
    record_latency(sent)


class Dramatiq(Target):
    name = "dramatiq"
    version = package_version("dramatiq")
    enqueue_label = "actor.send()"

    def connect(self) -> None:
        broker.client.ping()

    def enqueue(self, n: int) -> None:
        for _ in range(n):
            noop.send()

    def send_probe(self) -> None:
        probe.send(time.time())

    def _worker(self, threads: int) -> WorkerConfig:
        default = " (default)" if threads == 8 else ""
        return WorkerConfig(f"--processes 1 --threads {threads}{default}",
                            [tool("dramatiq"), "bench.peers.dramatiq", "--processes", "1", "--threads", str(threads)],
                            concurrency=threads)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker(t) for t in (1, 10, 100)]

    def latency_worker(self) -> WorkerConfig:
        return self._worker(8)


def make_target() -> Dramatiq:
    return Dramatiq()
