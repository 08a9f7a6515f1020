"""A private Postfix instance for integration tests, built from deploy/postfix/ snippets.

Layout (one temp root per instance, short so the unix sockets stay under 108 bytes)::

    ROOT/etc      config_directory: main.cf = Debian's defaults + harness settings +
                  deploy/postfix/main.cf.snippet; master.cf = Debian's + master.cf.snippet
    ROOT/spool    queue_directory (owned by postfix, set up by `postfix check`)
    ROOT/data     data_directory
    ROOT/maillog  the log (maillog_file via postlogd; no syslog needed)

Mail flow: client -> front smtpd (127.0.0.1:front_port) -> queue -> smtp-cmgw transport
-> content filter (127.0.0.1:filter_port, whatever the test runs there) -> reinjection
smtpd (127.0.0.1:reinject_port) -> queue -> smtp -> sink (127.0.0.1:sink_port). Every
domain is remote (mydestination is empty) and routed to the sink, so the bounces
Postfix sends to a sender address arrive at the sink too (null envelope sender).

The snippets use 127.0.0.1:10025 / 127.0.0.1:10026; the harness substitutes free ports
and fails loudly if a snippet no longer contains exactly one of each.

Postfix's master must run as root: the fixtures skip the tests when not root or when
Debian's postfix is missing (scripts/test installs it).
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import pytest

from gateway.testing import NextHopSink, ReceivedMessage, SinkBehaviour
from tests.real_parts import missing_part

__all__ = [
    "DEPLOY_DIR",
    "PostfixInstance",
    "QueueEntry",
    "free_port",
    "make_message",
    "postfix_available",
    "postfix_instance",
    "postfix_session",
    "sink",
    "wait_until",
]

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "postfix"
SNIPPET_FILTER = "[127.0.0.1]:10025"
SNIPPET_REINJECT = "127.0.0.1:10026"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTSUPER = shutil.which("postsuper") or "/usr/sbin/postsuper"
MASTER = "/usr/lib/postfix/sbin/master"
_QUEUE_DIRS = [
    "active",
    "bounce",
    "corrupt",
    "defer",
    "deferred",
    "flush",
    "hold",
    "incoming",
    "private",
    "saved",
    "trace",
]
DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")


def postfix_available() -> str | None:
    """None when a private Postfix can run here, else the reason it cannot."""
    if not (Path(POSTFIX).exists() and Path(MASTER).exists()):
        return "Debian's postfix is not installed (scripts/test installs it)"
    if os.geteuid() != 0:
        return "Postfix's master must run as root"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 20.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate!r}")
        time.sleep(interval)


def make_message(
    *,
    subject: str,
    body: str,
    mail_from: str = "sender@example.org",
    to: Sequence[str] = ("alice@example.com",),
    extra_headers: Sequence[tuple[str, str]] = (),
) -> EmailMessage:
    """A small text message with a unique Message-ID."""
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = formatdate()
    msg["Message-ID"] = make_msgid(domain="harness.test")
    for name, value in extra_headers:
        msg[name] = value
    msg.set_content(body)
    return msg


@dataclass(frozen=True)
class QueueEntry:
    """One message in Postfix's queue (a line of ``postqueue -j``)."""

    queue_name: str  # incoming | active | deferred | hold | maildrop
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    delay_reasons: tuple[str, ...]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> QueueEntry:
        rcpts = obj.get("recipients", [])
        return cls(
            queue_name=str(obj.get("queue_name", "")),
            queue_id=str(obj.get("queue_id", "")),
            sender=str(obj.get("sender", "")),
            recipients=tuple(str(r.get("address", "")) for r in rcpts),
            delay_reasons=tuple(str(r["delay_reason"]) for r in rcpts if "delay_reason" in r),
        )


class PostfixInstance:
    """One private Postfix (config, queue, data dirs under a temp root)."""

    def __init__(
        self,
        *,
        sink_port: int,
        filter_port: int | None = None,
        front_port: int | None = None,
        reinject_port: int | None = None,
        deploy_dir: Path = DEPLOY_DIR,
    ) -> None:
        self.sink_port = sink_port
        self.filter_port = filter_port or free_port()
        self.front_port = front_port or free_port()
        self.reinject_port = reinject_port or free_port()
        self.deploy_dir = deploy_dir
        # mkdtemp is 0700: the postfix user must be able to reach its queue below it.
        self.root = Path(tempfile.mkdtemp(prefix="cmgw-pf-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "maillog"
        self._reinject_enabled = True
        self.started = False

    # -- configuration ---------------------------------------------------------------

    def main_cf(self) -> str:
        """main.cf: Debian's defaults, harness settings, then the deploy snippet."""
        snippet = (self.deploy_dir / "main.cf.snippet").read_text()
        snippet = _replace_once(snippet, SNIPPET_FILTER, f"[127.0.0.1]:{self.filter_port}")
        debian = DEBIAN_MAIN_CF.read_text() if DEBIAN_MAIN_CF.exists() else ""
        harness = f"""
# --- cm-gateway test harness: a private instance on loopback ---
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
myhostname = mx.harness.test
mydomain = harness.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# Every domain (recipients, and senders receiving bounces) ends at the sink.
default_transport = smtp:[127.0.0.1]:{self.sink_port}
relay_transport = smtp:[127.0.0.1]:{self.sink_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
# Tests retry deferred mail with `postqueue -f` (flush), which also revives
# destinations marked dead. The backoff stays long enough that a deferred message sits
# in the "deferred" queue while a test looks (with 1 s it flips deferred -> incoming ->
# active every second), yet short enough that Postfix retries on its own within seconds.
queue_run_delay = 10s
minimal_backoff_time = 10s
maximal_backoff_time = 20s
transport_retry_time = 1s
smtp_connect_timeout = 5s
delay_warning_time = 0h
smtpd_error_sleep_time = 0
"""
        return f"{debian.rstrip()}\n{harness}\n# --- deploy/postfix/main.cf.snippet ---\n{snippet}"

    def master_cf(self) -> str:
        """master.cf: Debian's, front smtpd on front_port, no chroot, then the snippet."""
        snippet = (self.deploy_dir / "master.cf.snippet").read_text()
        snippet = _replace_once(snippet, SNIPPET_REINJECT, f"127.0.0.1:{self.reinject_port}")
        if not self._reinject_enabled:
            snippet = _disable_service(snippet, f"127.0.0.1:{self.reinject_port}")
        lines = []
        for line in DEBIAN_MASTER_CF.read_text().splitlines():
            fields = line.split()
            if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.front_port}"
                # A chroot would need copies of /etc files inside the temp queue.
                fields[4] = "n"
                line = " ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n# --- deploy/postfix/master.cf.snippet ---\n" + snippet

    def write_config(self) -> None:
        """(Re)write main.cf and master.cf."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(self.master_cf())

    # -- lifecycle -------------------------------------------------------------------

    def _run(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        proc = subprocess.run([*args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()} "
                f"{proc.stdout.strip()}\n--- maillog tail ---\n{self.log_tail()}"
            )
        return proc.stdout

    def postfix(self, *args: str, check: bool = True) -> str:
        """Run ``postfix -c CONFIG_DIR <args>``."""
        return self._run(POSTFIX, "-c", str(self.config_dir), *args, check=check)

    def start(self) -> None:
        """Write the config, create the queue (owned by postfix) and start the master.

        ``postfix start`` would first run ``postfix check`` (post-install over every
        file Postfix ships), which takes 12-20 s on a busy box; the master itself
        validates main.cf/master.cf and ``-w`` makes it report a failed start by exit
        status, so the harness creates the queue like post-install does and runs it.
        """
        self.write_config()
        self._make_queue_dirs()
        self._run(MASTER, "-c", str(self.config_dir), "-w")
        self.started = True
        atexit.register(self.destroy)  # a master must not outlive an interrupted run
        wait_until(self._front_listening, timeout=15, what="Postfix's front smtpd")

    def _make_queue_dirs(self) -> None:
        """The queue layout and modes of Debian's postfix-files."""
        owner = pwd.getpwnam("postfix").pw_uid
        postdrop = grp.getgrnam("postdrop").gr_gid
        os.chown(self.data_dir, owner, 0)
        os.chown(self.queue_dir, 0, 0)
        layout = {name: (owner, 0, 0o700) for name in _QUEUE_DIRS}
        layout["maildrop"] = (owner, postdrop, 0o730)
        layout["public"] = (owner, postdrop, 0o710)
        layout["pid"] = (0, 0, 0o755)
        for name, (uid, gid, mode) in layout.items():
            path = self.queue_dir / name
            path.mkdir(exist_ok=True)
            os.chown(path, uid, gid)
            path.chmod(mode)

    def _front_listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.front_port), timeout=1):
                return True
        except OSError:
            return False

    def reload(self) -> None:
        """Rewrite the config and ``postfix reload`` (new/removed services take effect)."""
        self.write_config()
        pid = self.master_pid()
        assert pid is not None, "postfix master is not running"
        os.kill(pid, signal.SIGHUP)  # what `postfix reload` does, without its checks

    def set_reinjection(self, enabled: bool) -> None:
        """Open or close the reinjection listener (the gateway's next hop) and reload.

        Closing also ends the reinjection smtpd sessions still open (a gateway's pooled
        connections would otherwise outlive the reload), as a restart of Postfix would.
        """
        self._reinject_enabled = enabled
        self.reload()
        if not enabled:
            self._end_sessions_on(self.reinject_port)

        def state_reached() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.reinject_port), timeout=1):
                    return enabled
            except OSError:
                return not enabled

        wait_until(state_reached, timeout=15, what=f"reinjection listener enabled={enabled}")

    def _end_sessions_on(self, port: int) -> None:
        """SIGTERM the (smtpd) processes of this instance serving a connection to ``port``."""
        out = self._run("ss", "-Htnp", "state", "established", f"( sport = :{port} )")
        master = self.master_pid()
        for pid in {int(p) for p in re.findall(r"pid=(\d+)", out)}:
            if master is not None and _parent_pid(pid) == master:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)

    def master_pid(self) -> int | None:
        """The master's pid from its pid file, if it is running."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def stop(self) -> None:
        """Stop the master and wait until it is gone (ports free again)."""
        if not self.started:
            return
        pid = self.master_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)  # what `postfix stop` does
            try:
                wait_until(lambda: not _alive(pid), timeout=10, what="postfix master to exit")
            except TimeoutError:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        self.started = False

    def destroy(self) -> None:
        """Stop and remove the temp root."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- queue -----------------------------------------------------------------------

    def queue(self) -> list[QueueEntry]:
        """Every message in the queue (``postqueue -j``)."""
        out = self._run(POSTQUEUE, "-c", str(self.config_dir), "-j")
        return [QueueEntry.from_json(json.loads(line)) for line in out.splitlines() if line]

    def postconf_warnings(self) -> list[str]:
        """What ``postconf -n``, ``-M`` and ``-P`` warn about the built config (e.g. an
        unknown parameter name in a snippet: "unused parameter")."""
        warnings: list[str] = []
        for flag in ("-n", "-M", "-P"):
            proc = subprocess.run(
                [POSTCONF, "-c", str(self.config_dir), flag],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            warnings += [line for line in proc.stderr.splitlines() if line.strip()]
        return warnings

    def flush(self) -> None:
        """Ask the queue manager to retry every deferred message now."""
        self._run(POSTQUEUE, "-c", str(self.config_dir), "-f")

    def purge(self) -> None:
        """Delete every queued message (between tests)."""
        self._run(POSTSUPER, "-c", str(self.config_dir), "-d", "ALL", check=False)

    def wait_deferred(
        self, *, reason: str = "", count: int = 1, timeout: float = 20.0
    ) -> list[QueueEntry]:
        """Wait until ``count`` messages sit in the deferred queue with ``reason`` in
        their delay reason; return them."""

        def deferred() -> list[QueueEntry]:
            found = [
                e
                for e in self.queue()
                if e.queue_name == "deferred" and any(reason in r for r in e.delay_reasons)
            ]
            return found if len(found) >= count else []

        try:
            result: list[QueueEntry] = wait_until(
                deferred, timeout=timeout, interval=0.3, what="deferred mail"
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; queue: {self.queue()}") from None
        return result

    def wait_empty(self, timeout: float = 20.0) -> None:
        """Wait until the queue is empty (everything delivered or bounced)."""
        try:
            wait_until(lambda: not self.queue(), timeout=timeout, what="an empty queue")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; queue: {self.queue()}") from None

    # -- mail ------------------------------------------------------------------------

    def send(
        self,
        msg: EmailMessage | bytes,
        *,
        mail_from: str = "sender@example.org",
        rcpt_tos: Sequence[str] = ("alice@example.com",),
    ) -> None:
        """Submit a message to the front smtpd (raises if Postfix refuses it)."""
        data = msg if isinstance(msg, bytes) else msg.as_bytes()
        with smtplib.SMTP("127.0.0.1", self.front_port, timeout=15) as client:
            client.ehlo("client.harness.test")
            refused = client.sendmail(mail_from, list(rcpt_tos), data)
        assert not refused, f"front smtpd refused recipients: {refused}"

    def send_swaks(
        self,
        *,
        subject: str,
        body: str,
        mail_from: str = "sender@example.org",
        rcpt_tos: Sequence[str] = ("alice@example.com",),
        headers: Sequence[str] = (),
    ) -> str:
        """Submit a message with swaks (the operator's tool); returns its transcript."""
        swaks = shutil.which("swaks")
        if swaks is None:
            missing_part("swaks is not installed (scripts/test installs it)")
        args = [swaks, "--server", f"127.0.0.1:{self.front_port}", "--from", mail_from]
        args += ["--to", ",".join(rcpt_tos), "--helo", "client.harness.test"]
        args += ["--header", f"Subject: {subject}", "--body", body, "--hide-informational"]
        for header in headers:
            args += ["--add-header", header]
        return self._run(*args)

    def log_tail(self, lines: int = 40) -> str:
        """The end of this instance's maillog."""
        try:
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no maillog)"


def _parent_pid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 4, after the ")" that closes the (possibly spaced) command name.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise AssertionError(f"expected exactly one {old!r} in the deploy snippet")
    return text.replace(old, new)


def _disable_service(master_cf: str, service: str) -> str:
    """Comment out one master.cf service and its continuation lines."""
    out: list[str] = []
    inside = False
    for line in master_cf.splitlines():
        if line.startswith(service + " "):
            inside = True
        elif line and not line[0].isspace():
            inside = False
        out.append("#" + line if inside and line.strip() else line)
    return "\n".join(out) + "\n"


def token() -> str:
    """A unique word to find one test's messages in the sink."""
    return uuid.uuid4().hex[:12]


def subject_has(word: str) -> Callable[[ReceivedMessage], bool]:
    """Sink predicate: the (decoded) Subject contains ``word``."""
    return lambda m: word in m.subject


def bounce_for(word: str) -> Callable[[ReceivedMessage], bool]:
    """Sink predicate: a bounce (null sender) that quotes a message containing ``word``."""
    return lambda m: m.is_bounce and word.encode() in m.data


# -- pytest fixtures (import them into a test module to use them) -----------------------


# Test modules import these fixtures (there is no tests/integration/conftest.py), so
# pytest registers one copy per module: the shared objects below keep that to one sink
# and one Postfix per session. The copy that created an object tears it down.
_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session")
def sink() -> Iterator[NextHopSink]:
    """The final hop: a recording SMTP server for the whole session."""
    if "sink" in _SHARED:
        yield _SHARED["sink"]
        return
    s = _SHARED["sink"] = NextHopSink(SinkBehaviour(smtputf8=False)).start()
    try:
        yield s
    finally:
        s.stop()
        del _SHARED["sink"]


@pytest.fixture(scope="session")
def postfix_session(sink: NextHopSink) -> Iterator[PostfixInstance]:
    """One private Postfix for the session, delivering everything to ``sink``."""
    reason = postfix_available()
    if reason:
        missing_part(reason)
    if "postfix" in _SHARED:
        yield _SHARED["postfix"]
        return
    instance = _SHARED["postfix"] = PostfixInstance(sink_port=sink.port)
    try:
        instance.start()
        yield instance
    finally:
        instance.destroy()
        del _SHARED["postfix"]


@pytest.fixture
def postfix_instance(
    postfix_session: PostfixInstance, sink: NextHopSink
) -> Iterator[PostfixInstance]:
    """The session's Postfix with an empty queue, an empty running sink and the
    reinjection listener open."""
    postfix_session.purge()
    if not sink.running:
        sink.start()
    if not postfix_session._reinject_enabled:
        postfix_session.set_reinjection(True)
    sink.clear()
    yield postfix_session
    if not sink.running:
        sink.start()
    postfix_session.purge()
