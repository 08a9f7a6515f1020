"""One SMTP transaction to the next hop, with DATA sent in pieces, so that one large
message never stalls the other sessions.

    errors, reply_text = await sendmail(client, mail_from, rcpt_tos, content, options)

aiosmtplib's ``SMTP.sendmail`` runs a regular expression over the whole message for the
SIZE parameter, and ``SMTP.data`` two more (line endings, then dot-stuffing), each in
one go on the event loop: about 8 s for 25 MB on a slow machine, during which no other
session gets a byte. Here the message is cut at line ends into pieces of ``CHUNK``
octets; each piece is dot-stuffed (and its line endings repaired, though our own SMTP
front already guarantees them) with ``bytes`` methods and written, and the loop gets a
turn between pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator, Sequence

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from .lineends import find_bare_line_ending, line_pieces

__all__ = ["CHUNK", "send_data", "sendmail", "stuffed_pieces"]

CHUNK = 256 * 1024
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


def _crlf_only(piece: bytes) -> bytes:
    # Counting is cheap C; the regular expression runs only on a piece that needs it.
    if find_bare_line_ending(piece) is None:
        return piece
    return _LINE_ENDINGS.sub(b"\r\n", piece)


def stuffed_pieces(content: bytes, size: int = CHUNK) -> Iterator[bytes]:
    """``content`` as it goes on the wire after DATA: CRLF line endings, a leading dot
    doubled on every line (RFC 5321 §4.5.2), a final CRLF, then ``.\\r\\n``; in pieces
    of about ``size`` octets, each ending at a line end."""
    ends_with_line_end = False
    # Cut after a LF: no CRLF is split, and each piece starts a line (its leading dot).
    for part in line_pieces(content, size):
        piece = _crlf_only(part)
        if piece.startswith(b"."):
            piece = b"." + piece
        ends_with_line_end = piece.endswith(b"\r\n")
        yield piece.replace(b"\r\n.", b"\r\n..")
    if not ends_with_line_end:
        yield b"\r\n"
    yield b".\r\n"


async def send_data(client: aiosmtplib.SMTP, content: bytes) -> SMTPResponse:
    """DATA, the message in pieces, and the final reply; ``SMTPDataError`` unless 354
    then 250, as ``aiosmtplib.SMTP.data`` does. Each reply waits ``client.timeout``."""
    start = await client.execute_command(b"DATA")
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    protocol = client.protocol
    if protocol is None:
        raise SMTPServerDisconnected("Connection lost")
    for piece in stuffed_pieces(content):
        protocol.write(piece)
        await asyncio.sleep(0)
    response = await protocol.read_response(timeout=client.timeout)
    if response.code != 250:
        raise SMTPDataError(response.code, response.message)
    return response


async def sendmail(
    client: aiosmtplib.SMTP,
    mail_from: str,
    rcpt_tos: Sequence[str],
    content: bytes,
    mail_options: Sequence[str] = (),
) -> tuple[dict[str, SMTPResponse], str]:
    """MAIL, RCPT for each recipient, DATA: ``aiosmtplib.SMTP.sendmail``'s contract
    (refused recipients by address and the final reply text; ``SMTPRecipientsRefused``
    when every recipient is refused; ``SMTPNotSupported`` for SMTPUTF8 to a server
    without it; RSET after a failed transaction), without its
    passes over the whole message on the event loop."""
    options = list(mail_options)
    encoding = "utf-8" if any(o.lower() == "smtputf8" for o in options) else "ascii"
    if encoding == "utf-8" and not client.supports_extension("smtputf8"):
        raise SMTPNotSupported("SMTPUTF8 is not supported by this server")
    if client.supports_extension("size"):
        # RFC 1870 §5: the size may be an estimate; the exact count would need a pass.
        options.insert(0, f"SIZE={len(content)}")
    try:
        await client.mail(mail_from, options=options, encoding=encoding)
        refused: list[SMTPRecipientRefused] = []
        for rcpt in rcpt_tos:
            try:
                await client.rcpt(rcpt, encoding=encoding)
            except SMTPRecipientRefused as exc:
                refused.append(exc)
        if len(refused) == len(rcpt_tos):
            raise SMTPRecipientsRefused(refused)
        response = await send_data(client, content)
    except (SMTPResponseException, SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, SMTPResponseException):
            await client.rset()
        raise
    return {r.recipient: SMTPResponse(r.code, r.message) for r in refused}, response.message
