"""Processes of the throughput benchmark: start, wait for their banner, measure, stop.

Everything under test runs in its own process (the emulator, the relays, the sinks, the
load generators), so that the harness's own event loop never competes for their GIL.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "Proc",
    "free_port",
    "postfix_tool",
    "python_module",
    "smtp_source",
    "start_smtp_sink",
    "tree_cpu_seconds",
    "tree_memory_kb",
    "wait_port",
]

REPO = Path(__file__).resolve().parents[2]
_POSTFIX_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin")


def postfix_tool(name: str) -> str:
    """The path of ``smtp-source`` / ``smtp-sink`` (Debian's postfix package)."""
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *_POSTFIX_DIRS]))
    if found is None:
        raise FileNotFoundError(f"{name} not found: install Debian's postfix package")
    return found


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port} after {timeout:g}s") from None
            time.sleep(0.05)


class Proc:
    """A child process whose stderr goes to a log file and whose stdout is read only
    for its start-up banner."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_dir: Path,
        env: dict[str, str] | None = None,
        banner: str | None = None,
        timeout: float = 120.0,
        cwd: Path = REPO,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self.banner: re.Match[str] | None = None
        if banner is not None:
            self.banner = self._wait_banner(re.compile(banner), timeout)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _wait_banner(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        buffered = b""
        fd = self.popen.stdout.fileno()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                if self.popen.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffered += chunk
            for line in buffered.decode("utf-8", "replace").splitlines():
                match = pattern.search(line)
                if match:
                    return match
        self.stop()
        tail = self.log_path.read_text("utf-8", "replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start (no {pattern.pattern!r}):\n{tail}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        return self.popen.returncode


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def start_smtp_sink(log_dir: Path) -> tuple[Proc, int]:
    """Postfix's ``smtp-sink`` on a free port: accepts everything, keeps nothing."""
    port = free_port()
    argv = [postfix_tool("smtp-sink")]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]  # smtp-sink refuses to run as root
    # -m: smtp-sink serves 256 connections at once by default and leaves the rest queued
    # in the kernel, unanswered: a half-load phase of more sessions timed out waiting for
    # the banner. The backlog (1024) is the last argument.
    argv += ["-m", "1024", f"127.0.0.1:{port}", "1024"]
    proc = Proc("smtp-sink", argv, log_dir=log_dir)
    wait_port(port)
    return proc, port


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found.extend(int(c) for c in text.split())
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and its descendants so far, in seconds
    (/proc/<pid>/stat; a finished child's time is lost unless it was reaped)."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name, which may contain spaces.
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
        todo.extend(_children(current))
    return total / os.sysconf("SC_CLK_TCK")


def tree_memory_kb(pid: int, field: str = "VmHWM") -> int:
    """``field`` of /proc/<pid>/status (VmHWM: peak RSS; VmRSS: now), summed over the
    process and its descendants (the gateway's workers), in KiB."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            total += int(match.group(1))
        todo.extend(_children(current))
    return total


def smtp_source(port: int, *, messages: int, sessions: int, size: int) -> float:
    """Drive 127.0.0.1:``port`` with ``smtp-source``; returns the wall time in seconds.

    ``-d`` keeps each session's connection for its next message, as Postfix's
    content-filter client does. ``-l`` is the body length; the headers smtp-source
    writes (From, To, Date, Message-Id, Subject) make up the rest of ``size``."""
    argv = [
        postfix_tool("smtp-source"), "-d", "-s", str(sessions), "-m", str(messages),
        "-l", str(max(size - 160, 1)), "-f", "sender@bench.example",
        "-t", "triage@example.com", "-S", "Invoice question", "-M", "bench.example",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed
