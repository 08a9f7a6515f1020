"""Debian's Postfix as the smart host: STARTTLS with a real certificate
(``smtpd_tls_cert_file``) and SASL through Dovecot's auth service
(``smtpd_sasl_type = dovecot``, ``smtpd_tls_auth_only``), relaying only for
authenticated clients. The gateway's next hop is Postfix's smtpd; Postfix queues and
delivers to a recording sink. Postfix's own log proves TLS and the SASL login."""

from __future__ import annotations

import functools
import os
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import replies
from gateway.testing import NextHopSink

from .dovecot_harness import PASSWORD, DovecotInstance, dovecot_available, running_dovecot
from .nexthop_support import deliver_once, make_cert, running_tap, secure_delivery
from .postfix_harness import PostfixInstance, postfix_available, wait_until

pytestmark = [
    pytest.mark.skipif(postfix_available() is not None, reason=str(postfix_available())),
    pytest.mark.skipif(not dovecot_available(), reason="Dovecot is not installed"),
]

ENV = "CMGW_TEST_SMARTHOST_PASSWORD"
MARKER = b"smarthost-marker-5e0a"
CONTENT = b"From: a@example.com\r\nTo: b@remote.test\r\nSubject: s\r\n\r\n" + MARKER + b"\r\n"


class SmartHost(PostfixInstance):
    """The harness's Postfix, its front smtpd turned into an authenticated smart host."""

    def __init__(self, *, sink_port: int, cert: tuple[Path, Path], auth_port: int) -> None:
        super().__init__(sink_port=sink_port)
        self.cert = cert
        self.auth_port = auth_port

    def main_cf(self) -> str:
        # Last in main.cf, so these win over the harness's and the snippet's settings.
        return (
            super().main_cf()
            + f"""
# --- smart host: STARTTLS + SASL (Dovecot), relay for authenticated clients only ---
content_filter =
mynetworks = 192.0.2.0/24
smtpd_tls_cert_file = {self.cert[0]}
smtpd_tls_key_file = {self.cert[1]}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{self.auth_port}
smtpd_tls_auth_only = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
# An smtpd that fails once (its SASL server not answering yet on a busy machine) is
# tried again after a second, not after the default minute of throttling.
service_throttle_time = 1s
"""
        )


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotInstance]:
    with running_dovecot() as instance:
        yield instance


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("smarthost-tls")
    return {"good": make_cert(d, "localhost"), "other": make_cert(d, "other-ca")}


@pytest.fixture(scope="module")
def smarthost(
    dovecot: DovecotInstance, certs: dict[str, tuple[Path, Path]]
) -> Iterator[tuple[SmartHost, NextHopSink]]:
    sink = NextHopSink().start()
    host = None
    try:
        # Twice under a full parallel run a smart host never answered EHLO and wrote no
        # log at all; a second instance (new ports, new queue) is tried once, and both
        # failures are reported if it fails too.
        failures = []
        for _ in range(2):
            host = SmartHost(sink_port=sink.port, cert=certs["good"], auth_port=dovecot.auth_port)
            host.start()
            failure = _wait_for_ehlo(host)
            if failure is None:
                break
            failures.append(failure)
            host.destroy()
            host = None
        else:
            raise AssertionError("\n\n".join(failures))
        yield host, sink
    finally:
        if host is not None:
            host.destroy()
        sink.stop()


def _wait_for_ehlo(host: SmartHost, timeout: float = 60.0) -> str | None:
    """None once the smart host's smtpd answers EHLO (the master listens at once, but on a
    busy machine the first smtpd, with its TLS and SASL set-up, can take many seconds);
    else why not, with what the probe saw, who listens on the port and Postfix's log."""
    port = host.front_port
    deadline = time.monotonic() + timeout
    seen = "nothing"
    while True:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                code = client.ehlo("probe.test")[0]
                if code == 250:
                    return None
                seen = f"EHLO answered {code}"
        except (OSError, smtplib.SMTPException) as exc:
            seen = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            listeners = subprocess.run(
                ["ss", "-Hltnp", f"( sport = :{port} )"], capture_output=True, text=True
            ).stdout
            return (
                f"the smart host on port {port} never answered EHLO (last: {seen}; master pid"
                f" {host.master_pid()}; listening: {listeners.strip() or 'nobody'}):\n"
                f"{host.log_tail(40)}"
            )
        time.sleep(0.5)


@pytest.fixture
def password() -> Iterator[None]:
    os.environ[ENV] = PASSWORD
    yield
    os.environ.pop(ENV, None)


delivery = functools.partial(secure_delivery, timeout=60.0)


async def test_verified_starttls_and_sasl_to_postfix_delivers(smarthost, certs, password):
    """tls = verify, AUTH as relay@example.com: Postfix accepts, logs TLS and the SASL
    user, and the message reaches the final sink; nothing went in clear on the wire."""
    host, sink = smarthost
    sink.clear()
    with running_tap(host.front_port) as tap:
        d = delivery(
            tap.port,
            tls="verify",
            ca_file=str(certs["good"][0]),
            auth_user="relay@example.com",
            auth_password_env=ENV,
        )
        result = await deliver_once(d, CONTENT, "b@remote.test")
    assert result.delivered, (result, host.log_tail(60))
    (got,) = sink.wait_for(1, where=lambda m: MARKER in m.data, timeout=30)
    assert got.rcpt_tos == ("b@remote.test",)

    def sasl_logged() -> str | None:
        tail = host.log_tail(200)
        return tail if "sasl_username=relay@example.com" in tail else None

    log = wait_until(sasl_logged, timeout=10, what="Postfix's SASL log line")
    assert "TLS connection established from localhost[127.0.0.1]" in log, log
    assert MARKER not in tap.sent and b"AUTH" not in tap.sent


async def test_wrong_password_at_postfix_is_451_478_and_nothing_relayed(
    smarthost, certs, monkeypatch
):
    """Postfix answers 535 5.7.8: our client hears 451 4.7.8, the message stays with it."""
    host, sink = smarthost
    sink.clear()
    monkeypatch.setenv(ENV, "not-the-password")
    d = delivery(
        host.front_port, tls="required", auth_user="relay@example.com", auth_password_env=ENV
    )
    result = await deliver_once(d, CONTENT, "b@remote.test")
    assert result.reply == replies.DOWNSTREAM_AUTH_FAILED
    assert "535" in (result.error or "")
    assert "not-the-password" not in (result.error or "")


async def test_wrong_ca_for_postfix_certificate_is_451_475(smarthost, certs, password):
    """Postfix's certificate checked against another CA: 451 4.7.5, no AUTH, no mail."""
    host, sink = smarthost
    sink.clear()
    with running_tap(host.front_port) as tap:
        d = delivery(
            tap.port,
            tls="verify",
            ca_file=str(certs["other"][0]),
            auth_user="relay@example.com",
            auth_password_env=ENV,
        )
        result = await deliver_once(d, CONTENT, "b@remote.test")
    assert result.reply == replies.DOWNSTREAM_TLS_FAILED
    assert MARKER not in tap.sent and b"MAIL FROM" not in tap.sent


async def test_without_auth_postfix_refuses_to_relay(smarthost, certs):
    """The smart host really requires AUTH: without it the recipient is refused (5xx)."""
    host, _ = smarthost
    d = delivery(host.front_port, tls="verify", ca_file=str(certs["good"][0]))
    result = await deliver_once(d, CONTENT, "b@remote.test")
    assert result.reply.is_permanent, result
    assert "access denied" in result.reply.text.lower(), result
