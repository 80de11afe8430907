"""Private redis-server processes on local ports, for tests that restart, lock or cluster a server.

Each is started in its own temp dir and always stopped by the fixture that made it.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


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
    """One redis-server on 127.0.0.1:`port`, its data kept in `dir` across restarts."""

    def __init__(self, port: int, *args: str, dir: Path | None = None) -> None:
        self.port = port
        self.args = list(args)
        self.dir = dir or Path(tempfile.mkdtemp(prefix=f"redis-{port}-"))
        self._own_dir = dir is None
        self.process: subprocess.Popen | None = None

    def start(self) -> "LocalRedis":
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use; a test server cannot start there")
        listen = ["--port", "0"] if "--tls-port" in self.args else ["--port", str(self.port)]
        self.process = subprocess.Popen(
            [redis_server_binary(), *listen, "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--daemonize", "no", "--logfile", str(self.dir / "redis.log"), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until = time.monotonic() + 10
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"redis-server on port {self.port} did not start: "
                                   + (self.dir / "redis.log").read_text()[-2000:])
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: an append-only file is flushed); SIGKILL if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
