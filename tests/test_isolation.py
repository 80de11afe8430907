"""What each pytest process owns when the suite runs in parallel (tests/servers.py): its Redis db
and its ports. A mistake here would let two processes flush each other's jobs or meet on one port."""
from __future__ import annotations

import socket

import pytest

from tests.servers import free_port, port_share, redis_test_db


def as_worker(monkeypatch, index: int | None, count: int, spec: str = "") -> None:
    if index is None:
        monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
        monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    else:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    monkeypatch.setenv("TEST_REDIS_DB", spec)


@pytest.mark.parametrize("spec, count, dbs", [
    ("", 1, [9]),                   # serial: the suite's db since before it ran in parallel
    ("", 3, [9, 14, 15]),           # the dbs neither development tools (1-8) nor the benchmarks (10-13) use
    ("5", 1, [5]),
    ("5-8", 4, [5, 6, 7, 8]),       # a range
    ("5-8", 2, [5, 6]),
    ("12, 3,7", 3, [12, 3, 7]),     # a list
])
def test_each_process_gets_a_db_of_its_own(monkeypatch, spec, count, dbs):
    if count == 1:
        as_worker(monkeypatch, None, 1, spec)
        assert [redis_test_db()] == dbs
        return
    got = []
    for index in range(count):
        as_worker(monkeypatch, index, count, spec)
        got.append(redis_test_db())
    assert got == dbs


@pytest.mark.parametrize("spec, count, said", [
    ("", 4, "4 test processes need 4 Redis dbs (0-15); TEST_REDIS_DB=(unset) gives [9, 14, 15]: name one per "
            "process (a range such as 5-7, or a list), or run with -n 0"),
    ("1", 3, "3 test processes need 3 Redis dbs (0-15); TEST_REDIS_DB=1 gives [1]"),    # never 1, 2, 3 by guess
    ("14-16", 3, "3 test processes need 3 Redis dbs (0-15); TEST_REDIS_DB=14-16 gives [14, 15, 16]"),
    ("nine", 1, "TEST_REDIS_DB='nine' is not a db (5), a range (5-7) or a list (9,14,15)"),
])
def test_too_few_dbs_is_one_clear_line(monkeypatch, spec, count, said):
    as_worker(monkeypatch, count - 1, count, spec)
    with pytest.raises(pytest.fail.Exception) as failed:
        redis_test_db()
    assert str(failed.value).startswith(said)


def test_a_free_port_is_below_the_ephemeral_range_and_never_handed_out_twice():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(p in port_share() and p < ephemeral_low for p in ports)
    for port in ports:                           # free indeed: a server could listen there now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_the_processes_of_a_run_draw_ports_from_shares_that_do_not_overlap(monkeypatch):
    shares = []
    for index in range(4):
        as_worker(monkeypatch, index, 4)
        shares.append(set(port_share()))
    assert all(len(share) > 1000 for share in shares)
    assert sum(len(share) for share in shares) == len(set().union(*shares))
