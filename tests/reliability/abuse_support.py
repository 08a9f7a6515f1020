"""Helpers for the hostile-input and protocol-abuse suites.

``GatewayProcess`` runs ``python -m gateway serve`` as a real subprocess (logs to files,
so a chatty gateway never blocks on a full pipe) and reads its RSS from ``/proc``;
``send_message`` speaks SMTP over a raw socket (dot-stuffing done here, byte for byte);
``hostile_messages`` generates the malformed corpus of issue 6 item 2.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway import replies
from gateway.replies import Reply

from ..integration.smtp_front_support import RawClient

__all__ = [
    "ROOT",
    "GatewayProcess",
    "Hostile",
    "added_header_names",
    "dot_stuff",
    "hostile_messages",
    "read_all",
    "running_gateway",
    "send_message",
    "toml_config",
]

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(rb"cm-gateway listening on [^\s:]+:(\d+)")


def toml_config(sections: Mapping[str, Mapping[str, object]]) -> str:
    """A TOML document from ``{section: {key: value}}`` (str, int, float, bool, list[str])."""
    out: list[str] = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        for key, value in values.items():
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


@dataclass
class GatewayProcess:
    """A running ``cm-gateway serve`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        """Resident set size in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, "no VmRSS line"
        return int(match.group(1))

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_bytes().decode("utf-8", "replace")


@contextmanager
def running_gateway(
    tmp: Path, config_toml: str, *, env: Mapping[str, str] | None = None, timeout: float = 180.0
) -> Iterator[GatewayProcess]:
    """Start ``python -m gateway serve --config`` (listen on port 0); stop it with SIGTERM."""
    config = tmp / "gateway.toml"
    config.write_text(config_toml, encoding="utf-8")
    log_path = tmp / "gateway.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        port = _wait_listening(proc, log_path, timeout)
        yield GatewayProcess(proc=proc, port=port, log_path=log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _wait_listening(proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_path.read_bytes())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log_path.read_bytes()[-3000:].decode("utf-8", "replace")
    raise AssertionError(f"gateway did not start (exit {proc.poll()}); log tail: {tail}")


def dot_stuff(content: bytes) -> bytes:
    """``content`` as it goes on the wire after DATA: a dot doubled at the start of every
    line that starts after CRLF (the only line end the server splits on), ending in CRLF,
    then the end-of-data line."""
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def wire_content(content: bytes) -> bytes:
    """What the server should record for ``content`` sent with ``dot_stuff``."""
    if content and not content.endswith(b"\r\n"):
        return content + b"\r\n"
    return content


def send_message(
    port: int,
    content: bytes,
    *,
    mail_from: str = "sender@example.net",
    rcpts: tuple[str, ...] = ("triage@example.com",),
    smtputf8: bool = False,
    timeout: float = 120.0,
) -> str:
    """One transaction over a fresh connection; the reply to the end of DATA (or to the
    first command that was refused)."""
    raw = RawClient(port, timeout=timeout)
    try:
        banner = raw.reply()
        assert banner.startswith("220"), banner
        raw.cmd("EHLO client.example.net")
        reply = raw.cmd(f"MAIL FROM:<{mail_from}>" + (" SMTPUTF8" if smtputf8 else ""))
        if not reply.startswith("250"):
            return reply
        for rcpt in rcpts:
            reply = raw.cmd(f"RCPT TO:<{rcpt}>")
            if not reply.startswith("250"):
                return reply
        reply = raw.cmd("DATA")
        if not reply.startswith("354"):
            return reply
        raw.send(dot_stuff(content))
        reply = raw.reply()
        raw.cmd("QUIT")
        return reply
    finally:
        raw.close()


def read_all(sock: socket.socket, *, quiet: float = 1.0, limit: float = 60.0) -> bytes:
    """Bytes from ``sock`` until it is closed, or nothing came for ``quiet`` seconds."""
    sock.settimeout(quiet)
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def added_header_names(prefix: bytes) -> list[str]:
    """The lower-case names of the header fields in ``prefix`` (what the gateway prepended);
    a line that is neither a field nor a folded continuation is returned as ``"!<line>"``."""
    names: list[str] = []
    for line in prefix.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not re.fullmatch(rb"[!-9;-~]+", name):
            names.append("!" + line[:60].decode("ascii", "replace"))
            continue
        names.append(name.decode("ascii").lower())
    return names


@dataclass(frozen=True)
class Hostile:
    """One generated hostile message and the documented outcome: None = delivered."""

    name: str
    content: bytes
    smtputf8: bool = False
    refused_with: Reply | None = None


def _head(message_id: str, *extra: str, subject: str = "Invoice INV-20417 overdue") -> bytes:
    lines = [
        "From: Alice <alice@example.net>",
        "To: Triage <triage@example.com>",
        f"Subject: {subject}",
        f"Message-ID: <{message_id}@hostile.test>",
        "Date: Mon, 01 Jan 2024 10:00:00 +0000",
        "MIME-Version: 1.0",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _fold(name: str, value: bytes, width: int = 900) -> bytes:
    """A header whose value is folded into lines of ``width`` octets (RFC 5322 §2.2.3)."""
    chunks = [value[i : i + width] for i in range(0, len(value), width)]
    return name.encode("ascii") + b": " + b"\r\n ".join(chunks) + b"\r\n"


def _nested(depth: int) -> bytes:
    parts = [_head("deep", subject="deep nesting")]
    parts.append(b'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n')
    for level in range(1, depth):
        parts.append(
            f'--b{level - 1}\r\nContent-Type: multipart/mixed; boundary="b{level}"\r\n\r\n'.encode()
        )
    parts.append(f"--b{depth - 1}\r\nContent-Type: text/plain\r\n\r\ninvoice\r\n".encode())
    parts.extend(f"--b{level}--\r\n".encode() for level in range(depth - 1, -1, -1))
    return b"".join(parts)


def hostile_messages() -> list[Hostile]:
    """The generated corpus: broken MIME, deep nesting, huge headers, NULs, bad UTF-8..."""
    body = b"\r\nPlease pay invoice INV-20417 before Friday.\r\n"
    text = b"Content-Type: text/plain; charset=utf-8\r\n"
    cases = [
        Hostile(
            "multipart-without-boundary",
            _head("nobound", "Content-Type: multipart/mixed") + body,
        ),
        Hostile(
            "boundary-never-closed",
            _head("unclosed", 'Content-Type: multipart/mixed; boundary="zz"')
            + b"\r\n--zz\r\nContent-Type: text/plain\r\n\r\ninvoice part\r\n--zz\r\n"
            + b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0x",
        ),
        Hostile(
            "bad-base64",
            _head("b64", "Content-Type: text/plain", "Content-Transfer-Encoding: base64")
            + b"\r\n@@@not base64!!!\r\nSGVsbG8=garbage===\r\n=\r\n",
        ),
        Hostile(
            "bad-quoted-printable",
            _head("qp", "Content-Type: text/plain", "Content-Transfer-Encoding: quoted-printable")
            + b"\r\ninvoice =ZZ =\xff =4\r\nsoft break at end =",
        ),
        Hostile(
            "bogus-charsets",
            _head(
                "charset",
                "Content-Type: text/plain; charset=x-no-such-charset-\x7f",
                "X-Enc: =?bogus-cs?Q?caf=E9?= =?utf-8?B?!!!?=",
            )
            + b"\r\ncaf\xe9 \xff\xfe invoice\r\n",
        ),
        Hostile(
            "content-type-garbage",
            _head(
                "ctype",
                'Content-Type: ;;;===/"unterminated; boundary=',
                "Content-Transfer-Encoding: x-bogus-encoding",
                "Content-Disposition: attachment; filename*=''%ZZ%",
            )
            + body,
        ),
        Hostile("multipart-nested-2000-deep", _nested(2000)),
        Hostile(
            "to-of-50000-commas-folded",
            _head("commas", subject="commas") + _fold("To", b"," * 50_000) + body,
        ),
        Hostile(
            "to-of-50000-commas-one-line",
            _head("commas1", subject="commas") + b"To: " + b"," * 50_000 + b"\r\n" + body,
        ),
        Hostile(
            "header-of-1mb-one-line",
            _head("huge1") + b"X-Huge: " + b"a" * 1_048_576 + b"\r\n" + body,
            refused_with=replies.DATA_LINE_TOO_LONG,
        ),
        Hostile(
            "header-of-1mb-folded",
            _head("huge2") + _fold("X-Huge", b"a" * 1_048_576, width=990) + body,
        ),
        Hostile(
            "nul-bytes-in-headers-and-body",
            _head("nul", "X-Nul: a\x00b") + b"Subject: in\x00voice\r\n\r\nINV-1\x00\x00 pay\r\n",
        ),
        Hostile(
            "invalid-utf8-headers-with-smtputf8",
            _head("utf8a", text.decode())
            + b"X-Bad: \xc3\x28 \xff\xfe \xed\xa0\x80\r\nSubject: r\xe9fund \xc0\xaf\r\n"
            + b"\r\nrefund \xf8\x88\x80\x80\x80\r\n",
            smtputf8=True,
        ),
        Hostile(
            "invalid-utf8-headers-without-smtputf8",
            _head("utf8b", text.decode()) + b"X-Bad: \xc3\x28 \xff\xfe\r\n" + body,
        ),
        Hostile(
            "8bit-headers-without-smtputf8",
            _head("8bit") + "X-Name: Jörg Müller <jörg@bücher.example>\r\n".encode() + body,
        ),
        Hostile("no-from-date-message-id-subject", b"To: triage@example.com\r\n" + body),
        Hostile("empty-body", _head("emptybody") + b"\r\n"),
        Hostile("header-only-no-blank-line", _head("headeronly")),
        Hostile("not-a-header-at-all", b"\x00\x01\x02 not an email\r\n\r\n\x00\r\n"),
    ]
    return cases
