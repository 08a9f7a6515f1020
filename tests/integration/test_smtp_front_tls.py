"""STARTTLS, require_tls and AUTH PLAIN/LOGIN against a users file (real TLS handshakes
with a throwaway self-signed certificate made by the openssl CLI)."""

from __future__ import annotations

import asyncio
import smtplib
from base64 import b64encode
from pathlib import Path

import pytest

from gateway import replies
from gateway.config import SmtpConfig
from gateway.smtp._auth import hash_password

from .smtp_front_support import (
    RawClient,
    RecordingProcessor,
    client_tls_context,
    make_self_signed_cert,
    running_server,
    smtp_config,
)

# Cheap hashes: the format carries its cost, so tests need not pay production cost.
USERS = {
    "relay1": hash_password("correct horse", scheme="scrypt", cost=4),
    "relay2@example.com": hash_password("battery staple", scheme="pbkdf2-sha256", cost=1000),
}


# Every test here runs on both loops `[smtp] event_loop` offers (tests/conftest.py):
# aiosmtpd swaps the transport's protocol for STARTTLS, uvloop's transports included.
pytestmark = pytest.mark.both_loops


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("tls"))


def tls_config(cert: tuple[Path, Path], **overrides: object) -> SmtpConfig:
    return smtp_config(tls_cert_file=str(cert[0]), tls_key_file=str(cert[1]), **overrides)


def _starttls(client: smtplib.SMTP, cert: tuple[Path, Path]) -> None:
    client.ehlo("client.test")
    code, _ = client.starttls(context=client_tls_context(cert[0]))
    assert code == 220
    client.ehlo("client.test")


async def test_ehlo_offers_starttls_and_auth_only_after_tls(cert):
    """With a certificate: EHLO offers STARTTLS and no AUTH; after STARTTLS it offers
    AUTH LOGIN PLAIN and no longer STARTTLS."""
    async with running_server(RecordingProcessor(), tls_config(cert), users=USERS) as srv:

        def talk() -> tuple[dict[str, str], dict[str, str]]:
            with smtplib.SMTP("localhost", srv.port, timeout=10) as client:
                client.ehlo("client.test")
                before = dict(client.esmtp_features)
                client.starttls(context=client_tls_context(cert[0]))
                client.ehlo("client.test")
                return before, dict(client.esmtp_features)

        before, after = await asyncio.to_thread(talk)
    assert "starttls" in before and "auth" not in before
    assert "starttls" not in after
    assert after["auth"].split() == ["LOGIN", "PLAIN"]


async def test_auth_is_refused_before_starttls(cert):
    """AUTH over plain text gets 538 5.7.11 (encryption required), even with a good
    password."""
    async with running_server(RecordingProcessor(), tls_config(cert), users=USERS) as srv:

        def talk() -> str:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                token = b64encode(b"\0relay1\0correct horse").decode()
                return raw.cmd(f"AUTH PLAIN {token}")
            finally:
                raw.close()

        reply = await asyncio.to_thread(talk)
    assert reply.startswith("538 5.7.11")


@pytest.mark.parametrize(
    ("mechanism", "user", "password", "initial_response"),
    [
        ("PLAIN", "relay1", "correct horse", True),
        ("PLAIN", "relay2@example.com", "battery staple", False),
        ("LOGIN", "relay1", "correct horse", True),
        ("LOGIN", "relay2@example.com", "battery staple", False),
    ],
)
async def test_auth_with_good_password_succeeds_and_lets_untrusted_peer_relay(
    cert, mechanism, user, password, initial_response
):
    """After STARTTLS, AUTH PLAIN/LOGIN with a good password gives 235; the peer, outside
    relay_networks, may then relay to a foreign domain, and the message carries the user
    and tls=True."""
    processor = RecordingProcessor()
    config = tls_config(cert, relay_networks=["10.0.0.0/8"])
    async with running_server(processor, config, users=USERS) as srv:

        def talk() -> tuple[int, int]:
            with smtplib.SMTP("localhost", srv.port, timeout=10) as client:
                _starttls(client, cert)
                client.user, client.password = user, password
                method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
                code, _ = client.auth(mechanism, method, initial_response_ok=initial_response)
                client.mail("a@example.net")
                rcpt_code, _ = client.rcpt("someone@foreign.test")
                client.data(b"Subject: hi\r\n\r\nhello\r\n")
                return code, rcpt_code

        auth_code, rcpt_code = await asyncio.to_thread(talk)
    assert (auth_code, rcpt_code) == (235, 250)
    msg = processor.messages[0]
    assert (msg.authenticated_user, msg.tls) == (user, True)


@pytest.mark.parametrize(
    ("mechanism", "user", "password"),
    [
        ("PLAIN", "relay1", "wrong"),
        ("LOGIN", "relay1", "wrong"),
        ("PLAIN", "nobody", "correct horse"),
    ],
)
async def test_auth_with_bad_credentials_gets_535_and_no_relay(cert, mechanism, user, password):
    """A wrong password or unknown user gets 535 5.7.8; the session stays
    unauthenticated, so relaying from outside relay_networks is still denied."""
    config = tls_config(cert, relay_networks=["10.0.0.0/8"])
    async with running_server(RecordingProcessor(), config, users=USERS) as srv:

        def talk() -> tuple[int, bytes | str, str]:
            with smtplib.SMTP("localhost", srv.port, timeout=10) as client:
                _starttls(client, cert)
                client.user, client.password = user, password
                method = client.auth_plain if mechanism == "PLAIN" else client.auth_login
                with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                    client.auth(mechanism, method)
                client.mail("a@example.net")
                code, text = client.rcpt("someone@foreign.test")
                return err.value.smtp_code, err.value.smtp_error, f"{code} {text.decode()}"

        code, text, rcpt = await asyncio.to_thread(talk)
    assert code == 535 and isinstance(text, bytes) and text.startswith(b"5.7.8")
    assert rcpt == str(replies.RELAY_DENIED)


async def test_no_users_file_means_no_auth_even_over_tls(cert):
    """TLS without auth_users_file: EHLO after STARTTLS offers no AUTH, AUTH gets 504."""
    async with running_server(RecordingProcessor(), tls_config(cert)) as srv:

        def talk() -> tuple[dict[str, str], int]:
            with smtplib.SMTP("localhost", srv.port, timeout=10) as client:
                _starttls(client, cert)
                code, _ = client.docmd("AUTH", "PLAIN " + b64encode(b"\0a\0b").decode())
                return dict(client.esmtp_features), code

        features, code = await asyncio.to_thread(talk)
    assert "auth" not in features
    assert code == 504


async def test_require_tls_refuses_mail_before_starttls_with_530(cert):
    """require_tls: MAIL before STARTTLS gets 530; after STARTTLS mail flows (tls=True)."""
    processor = RecordingProcessor()
    async with running_server(processor, tls_config(cert, require_tls=True)) as srv:

        def talk() -> tuple[int, tuple[int, bytes]]:
            with smtplib.SMTP("localhost", srv.port, timeout=10) as client:
                client.ehlo("client.test")
                code, _ = client.docmd("MAIL", "FROM:<a@example.net>")
                _starttls(client, cert)
                client.mail("a@example.net")
                client.rcpt("b@example.com")
                return code, client.data(b"Subject: hi\r\n\r\nhello\r\n")

        before, (data_code, _) = await asyncio.to_thread(talk)
    assert before == 530
    assert data_code == 250
    assert processor.messages[0].tls is True


async def test_auth_aborted_with_star_gets_501_and_session_continues(cert):
    """A client answering an AUTH challenge with '*' gets 501 and can carry on."""
    async with running_server(RecordingProcessor(), tls_config(cert), users=USERS) as srv:

        def talk() -> tuple[int, int]:
            with smtplib.SMTP("localhost", srv.port, timeout=10) as client:
                _starttls(client, cert)
                code, _ = client.docmd("AUTH", "LOGIN")
                assert code == 334
                aborted, _ = client.docmd("*")
                noop, _ = client.noop()
                return aborted, noop

        aborted, noop = await asyncio.to_thread(talk)
    assert (aborted, noop) == (501, 250)


async def test_failed_tls_handshake_closes_that_connection_only(cert):
    """Garbage instead of a TLS ClientHello after STARTTLS closes that connection (no
    500 with exception text); the server keeps serving others."""
    async with running_server(RecordingProcessor(), tls_config(cert)) as srv:

        def talk() -> tuple[bytes, int]:
            raw = RawClient(srv.port)
            try:
                raw.reply()
                raw.cmd("EHLO client.test")
                assert raw.cmd("STARTTLS").startswith("220")
                raw.send(b"this is not a TLS client hello\r\n" * 4)
                try:
                    tail = raw.sock.recv(4096)
                except ConnectionResetError:
                    tail = b""
            finally:
                raw.close()
            with smtplib.SMTP("localhost", srv.port, timeout=10) as client:
                return tail, client.noop()[0]

        tail, noop = await asyncio.to_thread(talk)
    assert b"Error" not in tail and b"500" not in tail
    assert noop == 250
