"""Private redis-server processes on ports of their own, for tests that restart, lock or cluster a server.

Each is started in its own temp dir and always stopped by the fixture that made it. Its port is free
and this process's own (tests/servers.py, free_port), so parallel test processes never meet on one.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.servers import free_port, stop_server

READY = "Ready to accept connections"
TAKEN = "Address already in use"


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    return binary


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalRedis:
    """One redis-server on 127.0.0.1:`port` (a free one unless given), its data kept in `dir` across
    restarts. `tls` serves only TLS on that port; `--cluster-enabled` args get a free bus port too."""

    def __init__(self, *args: str, port: int | None = None, dir: Path | None = None, tls: bool = False) -> None:
        self._pick_port = port is None
        self.port = port or free_port()
        self.bus_port = free_port() if "--cluster-enabled" in args else None
        self.args = list(args)
        self.tls = tls
        self.dir = dir or Path(tempfile.mkdtemp(prefix="redis-"))
        self._own_dir = dir is None
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalRedis":
        for _ in range(5):
            if self._launch():
                self._pick_port = False              # a restart comes back on the same port
                return self
            # Another process bound the port between free_port() and this start: take another.
            self.port, self.bus_port = free_port(), self.bus_port and free_port()
        raise RuntimeError(f"redis-server found no free port: {self._log_tail()}")

    def _launch(self) -> bool:
        """Start on self.port; True once it serves, False if the port was taken and another may be tried."""
        listen = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        bus = ["--cluster-port", str(self.bus_port)] if self.bus_port else []
        log = self.dir / "redis.log"
        offset = log.stat().st_size if log.exists() else 0
        self.process = subprocess.Popen(
            [redis_server_binary(), *listen, *bus, "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--daemonize", "no", "--logfile", str(log), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.monotonic() + 10
        while READY not in self._log_tail(offset):
            if self.process.poll() is not None or time.monotonic() > until:
                self.stop()
                if self._pick_port and TAKEN in self._log_tail(offset):
                    return False
                raise RuntimeError(f"redis-server on port {self.port} did not start: " + self._log_tail(offset))
            time.sleep(0.02)
        return True

    def _log_tail(self, offset: int = 0) -> str:
        log = self.dir / "redis.log"
        if not log.exists():
            return ""
        with log.open() as f:
            f.seek(offset)
            return f.read()[-2000:]

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: an append-only file is flushed); SIGKILL if it hangs."""
        stop_server(self.process)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
