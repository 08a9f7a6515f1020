"""TLS and AUTH towards a next hop: the policy of one ``[downstream]`` (or route) table,
the errors a refusal raises, and the AUTH exchange.

    tls = none           never STARTTLS (a loopback reinjection port)
    tls = opportunistic  STARTTLS when the next hop offers it; certificate not checked
    tls = required       STARTTLS or no delivery; certificate not checked
    tls = verify         STARTTLS (or smtps://) with the chain checked against
                         ``tls_ca_file`` or the system store, and the host name

``smtps://`` is TLS from the first byte whatever ``tls`` says (``verify`` checks it). A
failed handshake or verification is never followed by a plaintext retry: the message
gets a 4xx and stays with the sending MTA. AUTH (PLAIN, else LOGIN) is sent only over an
encrypted connection; the password is read from the environment when a connection opens,
and no error or log line carries it or the AUTH lines.

Each refusal is a ``NextHopSecurityError`` whose ``reply`` is our client's 4xx:

    NextHopSecurityError
    ├── TlsUnavailable    no STARTTLS from a next hop that must have it   451 4.7.10
    ├── TlsFailed         handshake or certificate verification failed    451 4.7.5
    └── AuthFailed        AUTH refused (535...), impossible, or no password 451 4.7.8
"""

from __future__ import annotations

import base64
import functools
import ssl
from dataclasses import dataclass
from typing import Literal, Protocol

from aiosmtplib import SMTPException, SMTPResponse

from gateway import replies
from gateway.replies import Reply

__all__ = [
    "AuthFailed",
    "NextHopSecurityError",
    "Security",
    "TlsFailed",
    "TlsUnavailable",
    "authenticate",
]

TlsMode = Literal["none", "opportunistic", "required", "verify"]


class NextHopSecurityError(SMTPException):
    """The next hop cannot be used securely; ``reply`` is what our client hears."""

    reply: Reply = replies.DOWNSTREAM_TLS_FAILED


class TlsUnavailable(NextHopSecurityError):
    reply = replies.DOWNSTREAM_NO_TLS


class TlsFailed(NextHopSecurityError):
    reply = replies.DOWNSTREAM_TLS_FAILED


class AuthFailed(NextHopSecurityError):
    """``code``: the next hop's reply code (0 when it was never asked)."""

    reply = replies.DOWNSTREAM_AUTH_FAILED

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Security:
    """TLS and AUTH settings of one next hop (see the module docstring)."""

    tls: TlsMode = "none"
    implicit: bool = False
    ca_file: str = ""
    auth_user: str = ""
    auth_password_env: str = ""

    @property
    def wants_starttls(self) -> bool:
        return not self.implicit and self.tls != "none"

    @property
    def must_encrypt(self) -> bool:
        """No byte of a message may go out in clear text."""
        return self.implicit or self.tls in ("required", "verify") or bool(self.auth_user)

    @functools.cached_property
    def context(self) -> ssl.SSLContext:
        """One client context per next hop, built on first use (``tls_ca_file`` read
        then) and shared by its connections."""
        if self.tls == "verify":
            return ssl.create_default_context(cafile=self.ca_file or None)
        # Encryption without authentication: what "opportunistic" and "required" promise
        # (a next hop's self-signed certificate must not stop the mail).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context


def describe_tls_error(exc: BaseException) -> str:
    """One line about a failed handshake, for the log and ``DeliveryResult.error``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    return f"TLS handshake failed: {type(exc).__name__}: {exc}"


class _Channel(Protocol):
    """What AUTH needs of a connection (``SmtpClient``)."""

    encrypted: bool
    extensions: dict[str, str]

    async def command(self, line: bytes) -> SMTPResponse: ...


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode("utf-8"))


async def authenticate(client: _Channel, user: str, password: str | None) -> None:
    """AUTH PLAIN (or LOGIN) as ``user``; ``AuthFailed`` unless the next hop says 235.
    Refuses, before sending anything, on a connection that is not encrypted."""
    if not client.encrypted:
        raise AuthFailed("AUTH refused by the gateway: the connection is not encrypted")
    if password is None:
        raise AuthFailed("AUTH impossible: the password environment variable is not set")
    offered = client.extensions.get("auth", "").upper().split()
    if "PLAIN" in offered:
        response = await client.command(b"AUTH PLAIN " + _b64(f"\0{user}\0{password}"))
    elif "LOGIN" in offered:
        response = await client.command(b"AUTH LOGIN")
        for secret in (user, password):
            if response.code != 334:
                break
            response = await client.command(_b64(secret))
    else:
        raise AuthFailed(f"AUTH impossible: the next hop offers {offered or 'no'} mechanisms")
    if response.code != 235:
        # Only the next hop's own words: never the lines we sent.
        raise AuthFailed(f"AUTH refused: {response.code} {response.message}", response.code)
