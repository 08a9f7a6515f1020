"""TLS and AUTH to the next hop over real sockets: STARTTLS and implicit TLS with real
handshakes (openssl-made certificates), AUTH PLAIN against a test-only aiosmtpd next hop,
and a loopback tap that records every byte the gateway sent, to prove what went in clear.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway import replies
from gateway.config import build_config
from gateway.deliver._delivery import SmtpDelivery
from gateway.deliver._security import Security
from gateway.pipeline import build_processor
from gateway.testing import free_port

from .nexthop_support import (
    deliver_once,
    make_cert,
    running_secure_sink,
    running_tap,
    secure_delivery,
)
from .pipeline_support import inbound, mail

pytestmark = pytest.mark.both_loops

MARKER = b"secret-body-marker-8c1f"
CONTENT = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: tls\r\n\r\n" + MARKER + b"\r\n"
PASSWORD = "pa55-w0rd-never-logged"
ENV = "CMGW_TEST_NEXTHOP_PASSWORD"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("nexthop-tls")
    return {
        "good": make_cert(d, "localhost"),
        "other": make_cert(d, "other-ca"),  # a CA that did not sign the next hop's cert
        "wrong-name": make_cert(d, "elsewhere", san="DNS:elsewhere.test"),
    }


@pytest.fixture
def password() -> Iterator[None]:
    os.environ[ENV] = PASSWORD
    yield
    os.environ.pop(ENV, None)


delivery = functools.partial(secure_delivery, timeout=10.0, pool_size=2)


send = functools.partial(deliver_once, content=CONTENT)


async def test_verify_delivers_over_starttls_with_the_right_ca(certs):
    """tls = verify, the next hop's certificate signed by tls_ca_file: delivered, and
    the message travelled encrypted (the tap never saw it)."""
    with running_secure_sink(certs["good"]) as sink, running_tap(sink.port) as tap:
        d = delivery(tap.port, tls="verify", ca_file=str(certs["good"][0]))
        result = await send(d)
    assert result.delivered, result
    (got,) = sink.received
    assert got.tls and got.content == CONTENT
    assert b"STARTTLS" in tap.sent
    assert MARKER not in tap.sent and b"MAIL FROM" not in tap.sent


async def test_smtps_implicit_tls_verifies_and_delivers(certs):
    """smtps:// speaks TLS from the first byte: not even EHLO goes in clear."""
    with running_secure_sink(certs["good"], implicit=True) as sink, running_tap(sink.port) as tap:
        d = delivery(tap.port, tls="verify", implicit=True, ca_file=str(certs["good"][0]))
        result = await send(d)
    assert result.delivered, result
    assert sink.received[0].tls
    assert b"EHLO" not in tap.sent and MARKER not in tap.sent


async def test_wrong_ca_is_451_475_and_nothing_is_sent(certs):
    """A certificate not signed by tls_ca_file: 451 4.7.5, no plaintext fallback."""
    with running_secure_sink(certs["good"]) as sink, running_tap(sink.port) as tap:
        d = delivery(tap.port, tls="verify", ca_file=str(certs["other"][0]))
        with capture_logs() as logs:
            result = await send(d)
    assert result.reply == replies.DOWNSTREAM_TLS_FAILED
    assert sink.received == []
    assert MARKER not in tap.sent and b"MAIL FROM" not in tap.sent
    assert tap.connections == 1  # no second, plaintext attempt
    (line,) = [e for e in logs if e["event"] == "next_hop_tls_failed"]
    assert "certificate verification failed" in line["error"]


async def test_wrong_host_name_is_451_475(certs):
    """A valid chain for another host name (elsewhere.test, not 127.0.0.1): refused."""
    with running_secure_sink(certs["wrong-name"]) as sink:
        d = delivery(sink.port, tls="verify", ca_file=str(certs["wrong-name"][0]))
        result = await send(d)
    assert result.reply == replies.DOWNSTREAM_TLS_FAILED
    assert "IP address mismatch" in (result.error or "") or "hostname" in (result.error or "")
    assert sink.received == []


@pytest.mark.parametrize("mode", ["required", "verify"])
async def test_no_starttls_when_required_is_451_4710_and_nothing_sent_in_clear(mode):
    """A next hop without STARTTLS and tls = required/verify: 451 4.7.10; the tap shows
    EHLO and QUIT at most, never MAIL FROM or the message."""
    with running_secure_sink(None) as sink, running_tap(sink.port) as tap:
        result = await send(delivery(tap.port, tls=mode))
    assert result.reply == replies.DOWNSTREAM_NO_TLS
    assert sink.received == []
    assert b"MAIL FROM" not in tap.sent and MARKER not in tap.sent


async def test_opportunistic_without_starttls_delivers_in_clear():
    """tls = opportunistic and no STARTTLS offered: delivered unencrypted, as promised."""
    with running_secure_sink(None) as sink:
        result = await send(delivery(sink.port, tls="opportunistic"))
    assert result.delivered
    assert not sink.received[0].tls


async def test_opportunistic_encrypts_when_offered_without_checking_the_cert(certs):
    """tls = opportunistic and a certificate nobody signed: STARTTLS, delivered."""
    with running_secure_sink(certs["wrong-name"]) as sink:
        result = await send(delivery(sink.port, tls="opportunistic"))
    assert result.delivered
    assert sink.received[0].tls


async def test_auth_plain_over_starttls_delivers_and_the_password_never_shows(certs, password):
    """auth_user over verified STARTTLS: AUTH accepted, message delivered as that user;
    the tap saw neither AUTH nor the password in clear."""
    users = {"relay@example.com": PASSWORD}
    with running_secure_sink(certs["good"], users=users) as sink, running_tap(sink.port) as tap:
        d = delivery(
            tap.port,
            tls="verify",
            ca_file=str(certs["good"][0]),
            auth_user="relay@example.com",
            auth_password_env=ENV,
        )
        result = await send(d)
    assert result.delivered, result
    assert sink.received[0].auth_user == "relay@example.com"
    assert sink.auth_attempts == [("PLAIN", True)]
    assert b"AUTH" not in tap.sent and PASSWORD.encode() not in tap.sent


async def test_lmtp_upgrades_with_starttls_and_verifies(certs):
    """lmtp:// with tls = verify: LHLO, STARTTLS, LHLO again, delivered encrypted."""
    with running_secure_sink(certs["good"], lmtp=True) as sink, running_tap(sink.port) as tap:
        d = SmtpDelivery(
            "127.0.0.1",
            tap.port,
            timeout=10.0,
            local_hostname="gw.test",
            security=Security(tls="verify", ca_file=str(certs["good"][0])),
            lmtp=True,
        )
        result = await send(d)
    assert result.delivered, result
    assert sink.received[0].tls
    assert tap.sent.startswith(b"LHLO gw.test\r\nSTARTTLS\r\n")
    assert MARKER not in tap.sent


async def test_auth_login_when_the_next_hop_offers_no_plain(certs, password):
    """A next hop offering only AUTH LOGIN: the gateway logs in with LOGIN."""
    users = {"relay@example.com": PASSWORD}
    with running_secure_sink(certs["good"], users=users, exclude_mechanisms=["PLAIN"]) as sink:
        d = delivery(
            sink.port,
            tls="required",
            auth_user="relay@example.com",
            auth_password_env=ENV,
        )
        result = await send(d)
    assert result.delivered, result
    assert sink.auth_attempts == [("LOGIN", True)]


async def test_wrong_password_is_one_451_478_and_one_log_line_then_backs_off(certs, password):
    """A 535: our client gets 451 4.7.8, one log line names user and reply (never the
    password); the next message within the back-off does not try AUTH again."""
    users = {"relay@example.com": "another password"}
    with running_secure_sink(certs["good"], users=users) as sink:
        d = delivery(
            sink.port,
            tls="required",
            auth_user="relay@example.com",
            auth_password_env=ENV,
        )
        with capture_logs() as logs:
            first = await d.deliver("a@example.com", ["b@example.com"], CONTENT)
            second = await d.deliver("a@example.com", ["b@example.com"], CONTENT)
        await d.aclose()
    assert first.reply == second.reply == replies.DOWNSTREAM_AUTH_FAILED
    assert sink.auth_attempts == [("PLAIN", False)]  # one try, no loop
    assert sink.received == []
    failures = [e for e in logs if e["event"] == "next_hop_auth_failed"]
    assert len(failures) == 1
    assert failures[0]["user"] == "relay@example.com" and "535" in failures[0]["error"]
    assert PASSWORD not in repr(logs) and PASSWORD not in repr((first, second))


async def test_auth_never_goes_over_a_plaintext_connection(password):
    """auth_user with a next hop that has no TLS: refused before AUTH is sent."""
    with running_secure_sink(None, users={"relay@example.com": PASSWORD}) as sink:
        d = delivery(
            sink.port,
            tls="required",
            auth_user="relay@example.com",
            auth_password_env=ENV,
        )
        result = await send(d)
    assert result.reply == replies.DOWNSTREAM_NO_TLS
    assert sink.auth_attempts == []


async def test_next_hop_down_is_451_441():
    """Nothing listening: the documented 451 4.4.1, whatever the TLS mode."""
    result = await send(delivery(free_port(), tls="verify"))
    assert result.reply == replies.DOWNSTREAM_TEMPFAIL


async def test_pool_reuses_the_encrypted_connection_after_rset(certs):
    """Two messages through the pool: one TLS connection, reused after RSET, both
    messages encrypted on the same client port."""
    with running_secure_sink(certs["good"]) as sink:
        d = delivery(sink.port, tls="verify", ca_file=str(certs["good"][0]))
        try:
            for _ in range(2):
                result = await d.deliver("a@example.com", ["b@example.com"], CONTENT)
                assert result.delivered, result
            stats = d.pool.stats()
        finally:
            await d.aclose()
    assert stats["created"] == 1 and stats["reused"] == 1
    first, second = sink.received
    assert first.tls and second.tls
    assert first.peer_port == second.peer_port


async def test_through_the_pipeline_a_refused_tls_is_the_senders_451_and_nothing_delivered(
    tmp_path: Path,
):
    """[downstream] tls = "required" and a next hop without STARTTLS: the message's reply
    is 451 4.7.10 (the sending MTA keeps it), the log line says why, nothing arrives."""
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    with running_secure_sink(None) as sink:
        config = build_config(
            {
                "smtp": {"hostname": "gw.test"},
                "downstream": {"url": f"smtp://127.0.0.1:{sink.port}", "tls": "required"},
                "classifier": {"provider": "emulator"},
                "rules": {"files": ["rules.yaml"]},
            },
            file=str(tmp_path / "gateway.toml"),
            env={},
        )
        pipeline = build_processor(config)
        try:
            with capture_logs() as logs:
                reply = await pipeline.process(inbound(mail()))
        finally:
            await pipeline.aclose()
    assert reply == replies.DOWNSTREAM_NO_TLS
    assert sink.received == []
    (line,) = [e for e in logs if e["event"] == "message"]
    assert line["relay_error"].startswith("TlsUnavailable")
