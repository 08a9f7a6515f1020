"""The readiness probe of one next hop (``/readyz``): can a message go there now?

- ``maildir://``: a file can be written in ``tmp/``;
- SMTP/LMTP: connect (TLS first for ``smtps://``, the certificate checked when
  ``tls = verify``), greeting, EHLO/LHLO, QUIT; a next hop that must encrypt but offers
  no STARTTLS is not ready. The probe never sends STARTTLS or AUTH: a probe every few
  seconds must not count towards an account lockout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from urllib.parse import urlsplit

import aiosmtplib

from gateway.config import NextHopConfig

from ._security import NextHopSecurityError, Security
from ._smtp_client import SmtpClient

__all__ = ["probe_next_hop"]


def _probe_maildir(path: Path) -> None:
    tmp = os.path.join(path, "tmp")
    os.makedirs(tmp, exist_ok=True)
    probe = os.path.join(tmp, f".readyz.{os.getpid()}")
    with open(probe, "wb"):
        pass
    os.unlink(probe)


async def probe_next_hop(
    hop: NextHopConfig,
    *,
    local_hostname: str,
    timeout: float,  # noqa: ASYNC109 - per step
) -> tuple[bool, str]:
    """(ready, one line saying why) for ``hop``, within ``timeout``."""
    maildir = hop.maildir_path
    if maildir is not None:
        try:
            await asyncio.to_thread(_probe_maildir, maildir)
        except OSError as exc:
            return False, f"maildir {maildir} not writable: {exc.strerror or exc}"
        return True, f"maildir {maildir} writable"
    parts = urlsplit(hop.url)
    where = f"{parts.scheme}://{parts.hostname}:{parts.port}"
    implicit = parts.scheme == "smtps"
    wanted = Security(tls=hop.tls, implicit=implicit, auth_user=hop.auth_user)
    client = SmtpClient(
        parts.hostname or "localhost",
        parts.port or 0,
        timeout=timeout,
        local_hostname=local_hostname,
        # Only the implicit handshake (verified as configured); no STARTTLS, no AUTH.
        security=Security(tls=hop.tls if implicit else "none", implicit=implicit,
                          ca_file=hop.tls_ca_file),
        lmtp=parts.scheme.startswith("lmtp"),
        socket_path=parts.path if parts.scheme == "lmtp+unix" else None,
    )  # fmt: skip
    if client.socket_path is not None:
        where = f"lmtp+unix://{client.socket_path}"
    try:
        async with asyncio.timeout(timeout * 2):
            await client.connect()
            starttls = client.supports("starttls")
            await client.quit()
    except NextHopSecurityError as exc:
        return False, f"{where}: {exc}"
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return False, f"{where} unreachable: {type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):
            client.close()
    if wanted.wants_starttls and wanted.must_encrypt and not starttls:
        return False, f"{where} offers no STARTTLS (tls = {hop.tls})"
    return True, f"{where} answered {'LHLO' if client.lmtp else 'EHLO'}"
