"""A supervised worker follows its supervisor by itself (finding 18): no preexec_fn runs between fork
and exec (not safe while other threads run); the worker, told its supervisor's pid, asks the kernel
for SIGTERM when that process dies, and exits at once if it is already gone."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from core.worker import supervisor
from tests.conftest import ROOT
from tests.test_supervisor import alive, on_redis, wait_for  # noqa: F401  (on_redis: autouse fixture)

# A stand-in supervisor: starts one worker as Supervisor._spawn would, prints its pid, then waits.
PARENT = f"""
import os, subprocess, sys
env = dict(os.environ, {supervisor.SUPERVISOR_PID_ENV}=str(os.getpid()))
child = subprocess.Popen([sys.executable, "main.py", "queue:work", "--sleep", "0.2"], env=env, cwd={str(ROOT)!r},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
print(child.pid, flush=True)
child.wait()
"""


def test_the_worker_stops_when_its_supervisor_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        time.sleep(2)                                     # the worker is up and working
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_for(lambda: not alive(worker), 20, "the orphaned worker to exit")
    finally:
        if alive(worker):
            subprocess.run(["kill", "-9", str(worker)])


def test_a_worker_whose_supervisor_is_already_gone_exits_at_once():
    started = time.monotonic()
    result = subprocess.run([sys.executable, "main.py", "queue:work", "--sleep", "0.2"], cwd=ROOT, timeout=30,
                            env={**__import__("os").environ, supervisor.SUPERVISOR_PID_ENV: "1"},
                            capture_output=True, text=True)
    assert result.returncode == 1 and time.monotonic() - started < 10


def test_the_supervisor_passes_no_preexec_fn(monkeypatch):
    import asyncio

    seen = {}

    async def fake_exec(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", fake_exec)
    sup = supervisor.Supervisor.__new__(supervisor.Supervisor)
    sup.argv, sup._children, sup._stopping = ["x"], {}, asyncio.Event()
    try:
        asyncio.run(sup._spawn(1))
    except RuntimeError:
        pass
    assert "preexec_fn" not in seen and seen["env"][supervisor.SUPERVISOR_PID_ENV] == str(__import__("os").getpid())
