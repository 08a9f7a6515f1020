"""The zero-loss chaos run (issue 6, item 1): its parts (chaos_run.py drives them).

Topology, all real processes and sockets::

    Submitter (N SMTP sessions) -> Postfix front smtpd -> queue -> content_filter
      -> gateway subprocess (classifier = emulator over HTTP, faulty)
      -> Postfix reinjection smtpd -> queue -> smtp -> MessageIdSink

While mail flows, ``chaos_run.run_chaos`` kills the gateway with SIGKILL (and restarts it),
closes the reinjection listener (the gateway's next hop) and stops the sink (Postfix's
next hop) for a while. Then it flushes Postfix's queue until it is empty and reports
which Message-IDs arrived, how often, and how long it all took.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from gateway.testing import NextHopSink, ReceivedMessage, SinkBehaviour
from tests.integration.postfix_gateway import GatewayRunner
from tests.integration.postfix_harness import PostfixInstance, _parent_pid, free_port, wait_until

__all__ = [
    "ChaosGateway",
    "ChaosPostfix",
    "Delivery",
    "MessageIdSink",
    "Submitter",
    "chaos_messages",
]

# Fast retries: a message deferred by a killed gateway or a closed next hop comes back
# within seconds on its own (the test flushes too).
HARNESS_RETRY_CF = "queue_run_delay = 10s\nminimal_backoff_time = 10s\nmaximal_backoff_time = 20s\n"
FAST_RETRY_CF = "queue_run_delay = 2s\nminimal_backoff_time = 2s\nmaximal_backoff_time = 4s\n"

_DEFERRED = re.compile(r"^[^\n]*? (postfix[^\s\[]*)\[\d+\]: [^\n]* status=deferred", re.MULTILINE)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)
_STATUS = re.compile(rb"^x-cm-status:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)

_TOPICS = (
    ("Invoice INV-{n:06d} attached", "Please pay the attached invoice by Friday."),
    ("Complaint about order ORD-{n:06d}", "This is unacceptable, I am very disappointed."),
    ("Lunch on Friday #{n}", "Shall we meet at noon? Thank you."),
    ("Password reset for account {n}", "I need access to the shared drive, asap."),
    ("Annual leave request {n}", "My leave request: vacation in May."),
    ("Newsletter issue {n}", "Our monthly news. Click here to unsubscribe."),
    ("Refund for order ORD-{n:06d}", "I would like a refund, the parcel arrived broken."),
    ("Status of my order {n}", "Where is my order? It has not arrived yet."),
)


class ChaosPostfix(PostfixInstance):
    """The harness's Postfix with retry timers short enough for a chaos run."""

    def main_cf(self) -> str:
        """The harness's main.cf with fast queue retries."""
        text = super().main_cf()
        assert text.count(HARNESS_RETRY_CF) == 1, "the harness's retry settings moved"
        return text.replace(HARNESS_RETRY_CF, FAST_RETRY_CF)

    def set_reinjection(self, enabled: bool) -> None:
        """Open or close the reinjection listener; closing waits until nothing listens.

        Under load the harness's one-shot session cleanup is not enough: until the master
        has handled the reload, old smtpd processes still hold the listening socket and
        take the gateway's new connections. So keep ending them until the port is shut."""
        if enabled:
            super().set_reinjection(True)
            return
        self._reinject_enabled = False
        self.reload()
        wait_until(self._reinjection_shut, timeout=60, interval=0.5, what="reinjection shut")

    def maillog_size(self) -> int:
        """Where the maillog ends now (to read only what a run logs)."""
        try:
            return self.maillog.stat().st_size
        except OSError:
            return 0

    def deferrals_since(self, offset: int) -> Counter[str]:
        """Deferred delivery attempts logged after ``offset``, per Postfix service
        (``postfix/cmgw/smtp``: to the gateway; ``postfix/smtp``: to the sink)."""
        with self.maillog.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
        return Counter(m.group(1) for m in _DEFERRED.finditer(text))

    def _reinjection_shut(self) -> bool:
        out = self._run("ss", "-Htanp", f"( sport = :{self.reinject_port} )")
        master = self.master_pid()
        pids = {int(p) for p in re.findall(r"pid=(\d+)", out)}
        for pid in pids - {master}:
            if master is not None and _parent_pid(pid) == master:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        return not re.search(r"^LISTEN", out, re.MULTILINE)


class ChaosGateway(GatewayRunner):
    """The gateway subprocess, which a chaos run may kill without warning."""

    kills = 0

    def kill(self) -> None:
        """SIGKILL the gateway, each of its processes at once (the parent, its workers and
        the batcher: no shutdown, sessions cut mid-flight), and reap it."""
        proc = self._proc
        assert proc is not None and proc.poll() is None, "the gateway is not running"
        for pid in [proc.pid, *_descendants(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.kills += 1


def _descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    children = [int(c) for c in text.split()]
    return children + [d for c in children for d in _descendants(c)]


@dataclass(frozen=True)
class Delivery:
    """One transaction the sink accepted."""

    message_id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    status: str


def _delivery(message: ReceivedMessage) -> Delivery:
    head = message.data.split(b"\r\n\r\n", 1)[0]
    mid = _MESSAGE_ID.search(head)
    status = _STATUS.search(head)
    return Delivery(
        message_id=mid.group(1).decode("ascii", "replace") if mid else "",
        mail_from=message.mail_from,
        rcpt_tos=message.rcpt_tos,
        status=status.group(1).decode("ascii", "replace").strip() if status else "",
    )


class MessageIdSink:
    """The final hop (``gateway.testing.NextHopSink``), its deliveries by Message-ID.

    It can be stopped and started again on the same port (a next hop that is down)."""

    def __init__(self) -> None:
        self._sink = NextHopSink(
            SinkBehaviour(smtputf8=False),
            port=free_port(),
            hostname="sink.chaos.test",
            ready_timeout=30.0,
        )
        self._lock = threading.Lock()
        self._parsed: list[Delivery] = []  # the deliveries of the sink's first messages

    @property
    def port(self) -> int:
        """Where it listens."""
        return self._sink.port

    def start(self) -> MessageIdSink:
        """Listen (again) on :attr:`port`."""
        self._sink.start()
        return self

    def stop(self) -> None:
        """Stop listening: Postfix's deliveries to it fail and are deferred."""
        self._sink.stop()

    @property
    def deliveries(self) -> list[Delivery]:
        """A snapshot of every transaction so far."""
        with self._lock:
            received = self._sink.messages
            self._parsed += [_delivery(m) for m in received[len(self._parsed) :]]
            return list(self._parsed)

    def clear(self) -> None:
        """Forget every recorded transaction (a new run starts)."""
        with self._lock:
            self._sink.clear()
            self._parsed.clear()

    def arrived(self) -> int:
        """How many distinct Message-IDs arrived so far."""
        return len({d.message_id for d in self.deliveries})


def chaos_messages(run: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` distinct small messages (Message-ID, bytes) on varied topics."""
    out: list[tuple[str, bytes]] = []
    date = formatdate()
    for n in range(count):
        subject, body = _TOPICS[n % len(_TOPICS)]
        mid = f"<chaos-{run}-{n:06d}@chaos.test>"
        text = (
            f"From: sender{n % 17}@example.org\r\nTo: alice@example.com\r\n"
            f"Subject: {subject.format(n=n)}\r\nDate: {date}\r\nMessage-ID: {mid}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}\r\nReference {run}-{n}.\r\n"
        )
        out.append((mid, text.encode()))
    return out


class Submitter:
    """Sends messages into Postfix's front port over ``sessions`` SMTP sessions at once.

    A message counts as sent once Postfix answered 250; an error (timeout, 4xx) reconnects
    and sends the same message again, as any client would."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], sessions: int) -> None:
        self.port = port
        self.sessions = sessions
        self._todo = list(reversed(messages))
        self._lock = threading.Lock()
        self.accepted: list[str] = []
        self.retries = 0
        self.failures: list[str] = []
        self._threads: list[threading.Thread] = []
        self.finished_at = 0.0

    def start(self) -> Submitter:
        """Start the sending threads."""
        self._threads = [
            threading.Thread(target=self._session, name=f"chaos-send-{i}", daemon=True)
            for i in range(self.sessions)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _next(self) -> tuple[str, bytes] | None:
        with self._lock:
            return self._todo.pop() if self._todo else None

    def _session(self) -> None:
        client: smtplib.SMTP | None = None
        item = self._next()
        attempts = 0
        while item is not None:
            mid, data = item
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
                    client.ehlo("client.chaos.test")
                client.sendmail("sender@example.org", ["alice@example.com"], data)
            except (OSError, smtplib.SMTPException) as exc:
                with contextlib.suppress(Exception):
                    if client is not None:
                        client.close()
                client = None
                attempts += 1
                with self._lock:
                    self.retries += 1
                    if attempts >= 10:
                        self.failures.append(f"{mid}: {exc!r}")
                if attempts < 10:
                    time.sleep(0.5)
                    continue
            else:
                with self._lock:
                    self.accepted.append(mid)
            attempts = 0
            item = self._next()
        if client is not None:
            with contextlib.suppress(Exception):
                client.quit()
        with self._lock:
            self.finished_at = max(self.finished_at, time.monotonic())

    def join(self, timeout: float) -> None:
        """Wait for every thread; raise TimeoutError if one is still sending."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise TimeoutError(f"submission still running after {timeout}s")
