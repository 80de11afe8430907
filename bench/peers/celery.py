"""Celery with its Redis broker on db 12: `task.delay()` one at a time; `celery worker` with the
prefork pool and -c 1 (one child process doing the work, plus the parent), no result backend,
--without-gossip --without-mingle --without-heartbeat (the usual Redis tuning)."""
from __future__ import annotations

import time

from celery import Celery

from bench.harness import PEER_DB, Target, WorkerConfig, redis_url
from bench.peers._venv import package_version, tool
from bench.probe import record_latency, tick

app = Celery("bench", broker=redis_url(PEER_DB))
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.noop")
def noop() -> None:
    tick()


@app.task(name="bench.probe")
def probe(sent: float) -> None:
    record_latency(sent)


class CeleryTarget(Target):
    name = "celery"
    version = package_version("celery")

    def connect(self) -> None:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)

    def enqueue(self, n: int) -> None:
        for _ in range(n):
            noop.delay()

    def send_probe(self) -> None:
        probe.delay(time.time())

    def throughput_workers(self) -> list[WorkerConfig]:
        return [WorkerConfig("prefork -c 1", [tool("celery"), "-A", "bench.peers.celery", "worker", "-P", "prefork",
                                              "-c", "1", "--without-gossip", "--without-mingle",
                                              "--without-heartbeat"])]

    def latency_worker(self) -> WorkerConfig:
        return self.throughput_workers()[0]


def make_target() -> CeleryTarget:
    return CeleryTarget()
