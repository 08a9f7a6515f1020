"""A real ``redis-server`` (Debian's package) for tests: one per module, on a free port.

    from tests.integration.redis_support import redis_server  # the pytest fixture

or ``with running_redis(tmp_dir, password="...") as server:`` for a private one.
Persistence is off (``--save "" --appendonly no``) and its files live in a temporary
directory. ``stop()`` and ``start()`` play a Redis that goes down and comes back on the
same port; ``flush()`` empties it between tests.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from gateway.testing import free_port
from tests.real_parts import missing_part

__all__ = ["RedisServer", "redis_server", "running_redis"]

_START_TIMEOUT = 30.0  # this machine is slow and shared


@dataclass
class RedisServer:
    """A ``redis-server`` process on ``127.0.0.1:port``."""

    directory: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:port/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A synchronous client, for looking at what the gateway stored."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def start(self) -> RedisServer:
        """Start (again, on the same port) and wait until it answers PING."""
        if self._proc is not None:
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            missing_part("redis-server is not installed (Debian package redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + _START_TIMEOUT
        with self.client() as probe:
            while True:
                try:
                    if probe.ping():
                        return self
                except redis.ConnectionError:
                    pass
                if self._proc.poll() is not None:
                    err = self._proc.stderr.read() if self._proc.stderr else b""
                    raise RuntimeError(f"redis-server exited: {err.decode(errors='replace')}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"redis-server did not answer within {_START_TIMEOUT}s")
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill it: connections are refused until ``start()``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._proc is not None

    def flush(self) -> None:
        """Delete every key (starting it first if it was stopped)."""
        self.start()
        with self.client() as c:
            c.flushall()


@contextmanager
def running_redis(directory: Path, *, password: str | None = None) -> Iterator[RedisServer]:
    """A ``redis-server`` for the duration of the block."""
    server = RedisServer(directory, password=password).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the module; each test should ``flush()`` it first."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server
