"""Celery with its Redis broker on db 12: `task.delay()` one at a time (no bulk call); `celery
worker` with, at concurrency 1, its default prefork pool and -c 1 (one child process doing the
work, plus the parent), and at 10 and 100 the threads pool (-P threads -c N: one process; prefork
would be N processes); no result backend, --without-gossip --without-mingle --without-heartbeat
(the usual Redis tuning)."""
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
    enqueue_label = "task.delay()"

    def connect(self) -> None:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)

    def enqueue(self, n: int) -> None:
        for _ in range(n):
            noop.delay()

    def send_probe(self) -> None:
        probe.delay(time.time())

    def _worker(self, pool: str, c: int) -> WorkerConfig:
        return WorkerConfig(f"-P {pool} -c {c}", [tool("celery"), "-A", "bench.peers.celery", "worker", "-P", pool,
                                                  "-c", str(c), "--without-gossip", "--without-mingle",
                                                  "--without-heartbeat"], concurrency=c)

    def throughput_workers(self) -> list[WorkerConfig]:
        return [self._worker("prefork", 1), self._worker("threads", 10), self._worker("threads", 100)]

    def latency_worker(self) -> WorkerConfig:
        return self._worker("prefork", 1)


def make_target() -> CeleryTarget:
    return CeleryTarget()
