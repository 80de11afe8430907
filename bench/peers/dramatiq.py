"""Dramatiq with its Redis broker on db 12: `actor.send()` one at a time; the `dramatiq` CLI with
--processes 1 --threads 8 (its default thread count; one worker process besides the parent)."""
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

    def connect(self) -> None:
        broker.client.ping()

    def enqueue(self, n: int) -> None:
        for _ in range(n):
            noop.send()

    def send_probe(self) -> None:
        probe.send(time.time())

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig("--processes 1 --threads 8",
                             [tool("dramatiq"), "bench.peers.dramatiq", "--processes", "1", "--threads", "8"])]

    def latency_worker(self) -> WorkerConfig:
        return self.throughput_workers()[0]


def make_target() -> Dramatiq:
    return Dramatiq()
