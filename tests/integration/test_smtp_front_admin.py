"""What an administrator trips over at the SMTP front (issue 19): one client taking every
connection slot, HELP offering AUTH where EHLO does not, refusals without a log line."""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import ssl
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway import replies

from .smtp_front_support import (
    RawClient,
    RecordingProcessor,
    client_tls_context,
    make_self_signed_cert,
    running_server,
    smtp_config,
)

pytestmark = pytest.mark.both_loops


def _greeting(port: int, source: str) -> tuple[str, RawClient | None]:
    client = RawClient(port, source=source)
    try:
        banner = client.reply()
    except ConnectionError:
        client.close()
        return "closed", None
    if banner.startswith("220"):
        return banner, client
    client.close()
    return banner, None


async def test_one_client_flooding_connections_does_not_lock_out_the_relay_network():
    """30 idle connections from 127.0.0.2 (outside relay_networks) against 20 slots and a
    per-client cap of 5: only 5 are greeted, the rest get 421 4.7.0 from-your-address; while
    they are held, every one of 10 clients from 127.0.0.1 (a relay network) is greeted."""
    config = smtp_config(
        max_connections=20,
        max_connections_per_client=5,
        relay_networks=["127.0.0.1/32"],
    )
    async with running_server(RecordingProcessor(), config) as srv:

        def flood_then_relay() -> tuple[list[str], list[str]]:
            held: list[RawClient] = []
            flood: list[str] = []
            relay: list[str] = []
            try:
                for _ in range(30):
                    banner, client = _greeting(srv.port, "127.0.0.2")
                    flood.append(banner)
                    if client is not None:
                        held.append(client)
                for _ in range(10):
                    banner, client = _greeting(srv.port, "127.0.0.1")
                    relay.append(banner)
                    if client is not None:
                        held.append(client)
            finally:
                for client in held:
                    with contextlib.suppress(OSError):
                        client.close()
            return flood, relay

        with capture_logs() as logs:
            flood, relay = await asyncio.to_thread(flood_then_relay)
    assert sum(b.startswith("220") for b in flood) == 5
    assert flood.count(str(replies.CLIENT_CONNECTION_LIMIT)) == 25
    assert all(b.startswith("220") for b in relay), relay
    refused = [e for e in logs if e["event"] == "connection_refused"]
    assert len(refused) == 25
    assert refused[0]["peer"] == "127.0.0.2"
    assert refused[0]["reason"] == "per-client connection limit"


async def test_a_client_over_its_connection_rate_is_refused_and_others_are_not():
    """connection_rate_per_client = 3: the 4th connection within a minute from 127.0.0.3 is
    told 421 4.7.0 even though the first three were closed; 127.0.0.4 is still greeted."""
    config = smtp_config(connection_rate_per_client=3, relay_networks=[])
    async with running_server(RecordingProcessor(), config) as srv:

        def connect_many() -> tuple[list[str], str]:
            seen = []
            for _ in range(4):
                banner, client = _greeting(srv.port, "127.0.0.3")
                seen.append(banner)
                if client is not None:
                    client.cmd("QUIT")
                    client.close()
            other, client = _greeting(srv.port, "127.0.0.4")
            if client is not None:
                client.close()
            return seen, other

        seen, other = await asyncio.to_thread(connect_many)
    assert [b[:3] for b in seen] == ["220", "220", "220", "421"]
    assert seen[3] == str(replies.CLIENT_CONNECTION_LIMIT)
    assert other.startswith("220")


async def test_help_lists_auth_only_where_ehlo_offers_it():
    """Without TLS (and without a users file) EHLO offers no AUTH: neither does HELP."""
    async with running_server(RecordingProcessor()) as srv:

        def talk() -> tuple[dict[str, str], str]:
            with smtplib.SMTP("127.0.0.1", srv.port) as client:
                client.ehlo("c.test")
                return dict(client.esmtp_features), client.help().decode()

        ehlo, help_ = await asyncio.to_thread(talk)
    assert "auth" not in ehlo
    assert help_.startswith("Supported commands:")
    assert "AUTH" not in help_.split()


def _starttls(port: int, cert: Path, *, ciphers: str | None, tls12_only: bool) -> str:
    """The negotiated cipher, or "no session (error)"."""
    context = client_tls_context(cert)
    if tls12_only:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers:
        context.set_ciphers(ciphers)
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("c.test")
        try:
            client.starttls(context=context)
        except (ssl.SSLError, smtplib.SMTPServerDisconnected) as exc:
            return f"no session ({type(exc).__name__})"
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        assert cipher is not None
        return cipher[0]


async def test_starttls_offers_no_cbc_suite_and_the_minimum_version_is_configurable(
    tmp_path: Path,
) -> None:
    """A TLS 1.2 client that only offers CBC suites (LUCKY13) gets no session; an AEAD one
    does. With tls_min_version = TLSv1.3 a TLS 1.2 client gets none at all."""
    cert, key = make_self_signed_cert(tmp_path)
    config = smtp_config(tls_cert_file=str(cert), tls_key_file=str(key))
    async with running_server(RecordingProcessor(), config) as srv:
        # The two CBC suites Python's default server context offers.
        cbc_only = "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384"
        cbc = await asyncio.to_thread(_starttls, srv.port, cert, ciphers=cbc_only, tls12_only=True)
        gcm = await asyncio.to_thread(_starttls, srv.port, cert, ciphers=None, tls12_only=True)
    assert cbc.startswith("no session")
    assert "GCM" in gcm or "CHACHA20" in gcm
    config = smtp_config(tls_cert_file=str(cert), tls_key_file=str(key), tls_min_version="TLSv1.3")
    async with running_server(RecordingProcessor(), config) as srv:
        old = await asyncio.to_thread(_starttls, srv.port, cert, ciphers=None, tls12_only=True)
        new = await asyncio.to_thread(_starttls, srv.port, cert, ciphers=None, tls12_only=False)
    assert old.startswith("no session")
    assert new.startswith("TLS_")


def _transaction(port: int, mail: str, data: bytes | None) -> tuple[str, str]:
    client = RawClient(port)
    try:
        client.reply()
        client.cmd("EHLO c.test")
        first = client.cmd(mail)
        if data is None:
            return first, ""
        client.cmd("RCPT TO:<triage@example.com>")
        client.cmd("DATA")
        client.send(data)
        return first, client.reply()
    finally:
        client.close()


async def test_every_refused_transaction_leaves_one_log_line_with_its_reason():
    """SIZE= over the limit at MAIL (552 5.3.4), a message over the limit (552 5.3.4) and
    a CRLF line over 1 MiB (554 5.6.0) each log one line naming the reply and reason."""
    async with running_server(RecordingProcessor(), smtp_config(max_message_size=3_000_000)) as srv:
        with capture_logs() as logs:
            at_mail, _ = await asyncio.to_thread(
                _transaction, srv.port, "MAIL FROM:<a@example.net> SIZE=9000000", None
            )
            _, too_big = await asyncio.to_thread(
                _transaction,
                srv.port,
                "MAIL FROM:<a@example.net>",
                b"Subject: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * 3100 + b".\r\n",
            )
            _, too_long = await asyncio.to_thread(
                _transaction,
                srv.port,
                "MAIL FROM:<a@example.net>",
                b"Subject: x\r\n\r\n" + b"z" * (1 << 21) + b"\r\n.\r\n",
            )
    assert at_mail == str(replies.TOO_BIG)
    assert too_big == str(replies.TOO_BIG)
    assert too_long == str(replies.DATA_LINE_TOO_LONG)
    refusals = [e for e in logs if e["event"] in ("sender_refused", "message_refused")]
    assert [(e["event"], e["reply"]) for e in refusals] == [
        ("sender_refused", "5.3.4"),
        ("message_refused", "5.3.4"),
        ("message_refused", "5.6.0"),
    ]
    assert all(e["reason"] for e in refusals)


async def test_a_bare_lf_message_over_one_mib_gets_the_bare_lf_reply():
    """1.5 MB of bare-LF lines is one 'line' to SMTP: the reply is the specific 550 5.6.11
    bare LF (with its log line), not 554 5.6.0 line too long."""
    async with running_server(RecordingProcessor()) as srv:
        with capture_logs() as logs:
            _, reply = await asyncio.to_thread(
                _transaction,
                srv.port,
                "MAIL FROM:<a@example.net>",
                b"Subject: x\n\n" + b"hello world\n" * 130_000 + b"\r\n.\r\n",
            )
    assert reply == str(replies.BARE_LF)
    assert [e["kind"] for e in logs if e["event"] == "bare_line_ending_rejected"] == ["LF"]
