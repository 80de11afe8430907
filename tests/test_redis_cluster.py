"""The contract suite's core cases on a real 3-node Redis Cluster (on free ports), started and torn
down here. Every script touches only one queue's slot, or the cluster would answer CROSSSLOT."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from tests.contract.conftest import configure, open_backend
from tests.contract.test_audit_contract import (  # noqa: F401  (the audit fixes: every script still in one slot)
    test_a_failing_mark_comes_back_when_the_worker_is_gone,
    test_a_job_pushed_again_after_it_was_acknowledged_does_not_run_again,
    test_a_lost_reserve_answer_is_recovered_without_another_attempt,
    test_a_requeue_racing_a_failing_worker_keeps_the_job_queued_once,
    test_a_waiting_reserve_with_a_claim_is_recoverable)
from tests.contract.test_queue_contract import (  # noqa: F401  (collected here, run on the cluster)
    test_a_delayed_job_waits_until_it_is_due, test_an_expired_reservation_passes_on_and_fences_off_the_old_holder,
    test_delayed_bulk_push, test_dispatch_many_pushes_every_job_in_order,
    test_extending_a_reservation_keeps_a_long_job_from_a_second_worker, test_fail_records_the_job_and_removes_it,
    test_jobs_of_one_queue_come_out_in_dispatch_order, test_push_reserve_acknowledge,
    test_release_puts_a_job_back_after_its_delay_with_the_attempt_counted, test_restart_signal_is_shared,
    test_size_and_clear, test_the_first_queue_with_a_due_job_wins)
from tests.contract.test_release_contract import (  # noqa: F401  (SPEC 9: free releases, the store's clock)
    test_a_free_release_is_counted_and_a_plain_one_is_a_try,
    test_a_recovered_reservation_carries_the_same_counts_and_times,
    test_a_reserved_job_carries_its_push_and_due_times_on_the_store_clock,
    test_queue_retry_resets_the_releases_of_a_job_failed_or_still_stored)
from tests.contract.test_state_contract import (  # noqa: F401  (middleware state: one {lim:<key>} slot per script)
    more_states, state, test_a_circuit_opens_at_max_exceptions_and_a_success_closes_it,
    test_a_limiter_admits_allow_starts_then_says_how_long_to_wait, test_only_the_owner_holds_renews_and_frees_a_lock,
    test_racing_starts_never_pass_the_limit, test_two_owners_never_both_hold_a_lock)
from tests.redis_server import LocalRedis

# One xdist worker runs the whole file: the module's cluster is started once, not on every worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("redis-cluster")]


@pytest.fixture(scope="module")
def cluster():
    """Three empty masters joined into one cluster; always stopped and removed, even on failure."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    base = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
    nodes: list[LocalRedis] = []
    try:
        for n in range(3):
            node_dir = base / str(n)
            node_dir.mkdir()
            nodes.append(LocalRedis("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                    "--cluster-node-timeout", "2000", "--appendonly", "no",
                                    dir=node_dir).start())
        ports = [node.port for node in nodes]
        created = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                                 timeout=30)
        assert created.returncode == 0, created.stdout + created.stderr
        clients = [redis.Redis(port=p) for p in ports]
        until = time.monotonic() + 20
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
            assert time.monotonic() < until, "the cluster never reached state ok"
            time.sleep(0.1)
        yield clients
        for c in clients:
            c.close()
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def backend(cluster, monkeypatch, tmp_path):
    """The contract suite's fixture, pointed at the cluster through a redis+cluster:// URL."""
    for node in cluster:
        node.flushall()
    configure(monkeypatch, "redis")
    port = cluster[0].connection_pool.connection_kwargs["port"]
    monkeypatch.setenv("REDIS_URL", f"redis+cluster://127.0.0.1:{port}")
    async for b in open_backend("redis-cluster", tmp_path):
        yield b


@pytest.fixture
def store(backend):
    """The audit contract cases ask for `store`: here, the same cluster backend."""
    return backend


def test_the_queues_used_here_live_on_different_nodes(cluster):
    slots = {q: key_slot(f"queues:{{{q}}}".encode()) for q in ("contract", "contract-high", "contract-low")}
    owners = {}
    for low, high, (_host, port, *_), *_ in cluster[0].cluster("slots"):
        for queue, slot in slots.items():
            if low <= slot <= high:
                owners[queue] = port
    assert len(set(owners.values())) > 1, owners        # so the cases above really cross nodes


async def test_a_blocked_worker_on_queues_of_several_slots_wakes_promptly(backend):
    conn = backend.conn
    assert isinstance(conn.client, RedisCluster)
    waiting = asyncio.create_task(conn.reserve_wait(["contract-high", "contract-low"], timeout=5))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await conn.push("contract-low", '{"uuid": "00000000-0000-4000-8000-00000000000c"}')
    job = await waiting
    assert job.queue == "contract-low"
    assert time.monotonic() - started < 0.5
