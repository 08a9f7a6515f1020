"""``cm-gateway serve`` as a real process: start it, read its stdout, stop it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TextIO

from gateway.testing import free_port

__all__ = ["ROOT", "announcer", "free_port", "port_of", "read_until", "start_serve", "stop_serve"]

ROOT = Path(__file__).resolve().parents[2]


def start_serve(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    stderr: IO[bytes] | int = subprocess.PIPE,
    new_session: bool = True,
) -> subprocess.Popen[bytes]:
    """``cm-gateway serve ARGS`` in ``cwd``; stdout piped (see ``read_until``).
    ``stderr``: a file for a log too long for a pipe nobody reads; ``new_session``: a
    session (and process group) of its own, for signals sent to the group, and without
    the test runner's terminal: SIGHUP then reloads, as it does under systemd, however
    pytest was started."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=new_session,
    )


def read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float = 120.0) -> list[str]:
    """stdout lines up to and including the first one containing ``marker`` (raw fd reads:
    select() on a buffered file object misses lines already in its buffer)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.encode() in data and data.endswith(b"\n"):
            break
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    lines = data.decode().splitlines()
    for i, line in enumerate(lines):
        if marker in line:
            return lines[: i + 1]
    stderr = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
    raise AssertionError(f"no {marker!r} in stdout {lines!r}; stderr {stderr[-2000:]!r}")


def port_of(lines: list[str]) -> int:
    line = next(x for x in lines if x.startswith("cm-gateway listening on "))
    return int(line.rsplit(":", 1)[1].split()[0])


def stop_serve(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, (stderr or b"").decode()


def announcer(out: TextIO) -> Callable[[str], None]:
    """For ``gateway.ops.serve(..., announce=)`` in-process: what ``cm-gateway serve``
    prints once it listens, into ``out``."""
    return lambda address: print(f"cm-gateway listening on {address}", file=out)
