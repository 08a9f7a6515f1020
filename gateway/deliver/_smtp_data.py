"""One SMTP transaction to the next hop over an ``SmtpClient``: as few writes as
possible, and DATA in pieces so that one large message never stalls the other sessions.

    errors, reply_text = await sendmail(client, mail_from, rcpt_tos, content, options)

A next hop that offers PIPELINING (RFC 2920; Postfix's smtpd does) gets the whole
envelope in one write (the pool's RSET, XFORWARD, MAIL FROM, every RCPT TO, DATA) and
the replies are read afterwards, in order; then the content with its final dot, in one
write for a message under ``CHUNK``. Each write is a send() system call, the costliest
thing the gateway does per message. Any other next hop gets one command at a time.

Refusals mean what they meant in lock-step, because every reply of the batch is checked:
a refused MAIL FROM or every RCPT TO refused raises as before, and if the next hop
nonetheless answers DATA with 354 (RFC 2920 §3.1 says it should not), the data phase is
ended the way Postfix's smtp client and RFC 2920 do it: a lone ``.``, which cannot
deliver anything when no recipient was accepted. Should a recipient have been accepted
after a refused MAIL FROM (no sane server), or an XFORWARD have been refused in the
batch (the transaction may carry a half-forwarded client identity), the connection is
aborted instead: a DATA without its final dot is discarded by the next hop, so nothing
is delivered, and the caller may send the message again.

The content: aiosmtplib's ``SMTP.sendmail`` runs a regular expression over the whole
message for the SIZE parameter, and ``SMTP.data`` two more (line endings, then
dot-stuffing), each in one go on the event loop: about 8 s for 25 MB on a slow machine.
Here the message is cut at line ends into pieces of ``CHUNK`` octets; each piece is
dot-stuffed with ``bytes`` methods (and its line endings checked and repaired, unless the
caller says ``crlf_only``: content from our own SMTP front, whose DATA check already
rejected or rewrote every bare CR/LF; the check is half the work of a piece), and the
loop gets a turn between pieces; while the
transport's buffer is over its high-water mark the next piece waits for the next hop
(``SmtpClient.drain``), so the message is not held twice.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

from aiosmtplib import (
    SMTPDataError,
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

from gateway.mail import find_bare_line_ending, line_pieces

from ._smtp_client import SmtpClient, mailbox

__all__ = [
    "CHUNK",
    "XForwardRefused",
    "send_data",
    "send_data_lmtp",
    "sendmail",
    "stuffed_pieces",
]

CHUNK = 256 * 1024
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")


def _crlf_only(piece: bytes) -> bytes:
    # Counting is cheap C; the regular expression runs only on a piece that needs it.
    if find_bare_line_ending(piece) is None:
        return piece
    return _LINE_ENDINGS.sub(b"\r\n", piece)


class XForwardRefused(SMTPException):
    """An XFORWARD in a pipelined batch was refused: the connection has been aborted
    before the message's final dot (nothing delivered); send it again without XFORWARD."""

    def __init__(self, response: SMTPResponse) -> None:
        super().__init__(f"XFORWARD refused: {response.code} {response.message}")
        self.response = response


def stuffed_pieces(
    content: bytes, size: int = CHUNK, *, crlf_only: bool = False
) -> Iterator[bytes]:
    """``content`` as it goes on the wire after DATA: CRLF line endings, a leading dot
    doubled on every line (RFC 5321 §4.5.2), a final CRLF, then ``.\\r\\n``; in pieces
    of about ``size`` octets, each ending at a line end, the last one carrying the
    terminator (so a small message is one piece, one write).

    ``crlf_only``: the caller guarantees that ``content`` has no bare CR or LF, and the
    line endings are neither checked nor repaired. Only for content that passed the SMTP
    front's check: dot-stuffing sees only lines after a CRLF, so a ``\\n.\\n`` let
    through here would reach the next hop unstuffed."""
    last = b""
    # Cut after a LF: no CRLF is split, and each piece starts a line (its leading dot).
    for part in line_pieces(content, size):
        if last:
            yield last
        piece = part if crlf_only else _crlf_only(part)
        if piece.startswith(b"."):
            piece = b"." + piece
        last = piece.replace(b"\r\n.", b"\r\n..")
    yield last + (b".\r\n" if last.endswith(b"\r\n") else b"\r\n.\r\n")


async def send_data(client: SmtpClient, content: bytes, *, crlf_only: bool = False) -> SMTPResponse:
    """The message in pieces after the next hop's 354, and the final reply;
    ``SMTPDataError`` unless 250. ``crlf_only``: see ``stuffed_pieces``."""
    for i, piece in enumerate(stuffed_pieces(content, crlf_only=crlf_only)):
        if i:
            await client.drain()  # a large message: let the other sessions in
        client.write(piece)
    response = await client.reply()
    if response.code != 250:
        raise SMTPDataError(response.code, response.message)
    return response


async def sendmail(
    client: SmtpClient,
    mail_from: str,
    rcpt_tos: Sequence[str],
    content: bytes,
    mail_options: Sequence[str] = (),
    xforward: Sequence[bytes] = (),
    *,
    crlf_only: bool = False,
) -> tuple[dict[str, SMTPResponse], str]:
    """MAIL, RCPT for each recipient, DATA, the content: ``aiosmtplib.SMTP.sendmail``'s
    contract (refused recipients by address and the final reply text;
    ``SMTPRecipientsRefused`` when every recipient is refused; ``SMTPNotSupported`` for
    SMTPUTF8 to a server without it; RSET after a failed transaction), pipelined when the
    next hop offers it. ``xforward``: XFORWARD command lines to send ahead of MAIL FROM in
    the same batch (a pipelining next hop only; ``XForwardRefused`` if one is refused).
    ``crlf_only``: see ``stuffed_pieces``."""
    options = list(mail_options)
    encoding = "utf-8" if any(o.lower() == "smtputf8" for o in options) else "ascii"
    if encoding == "utf-8" and not client.supports("smtputf8"):
        raise SMTPNotSupported("SMTPUTF8 is not supported by this server")
    if client.supports("size"):
        # RFC 1870 §5: the size may be an estimate; the exact count would need a pass.
        options.insert(0, f"SIZE={len(content)}")
    params = "".join(" " + o for o in options).encode("ascii")
    mail = b"MAIL FROM:" + mailbox(mail_from).encode(encoding) + params + b"\r\n"
    rcpts = [b"RCPT TO:" + mailbox(r).encode(encoding) + b"\r\n" for r in rcpt_tos]
    try:
        if client.pipelining:
            refused = await _pipelined(client, mail_from, rcpt_tos, [*xforward], mail, rcpts)
        else:
            refused = await _lockstep(client, mail_from, rcpt_tos, mail, rcpts)
        if client.lmtp:
            accepted = [r for r in rcpt_tos if r not in {x.recipient for x in refused}]
            message = await send_data_lmtp(client, content, accepted, refused, crlf_only)
        else:
            message = (await send_data(client, content, crlf_only=crlf_only)).message
    except (SMTPResponseException, SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, SMTPResponseException):
            await client.rset()
        raise
    return {r.recipient: SMTPResponse(r.code, r.message) for r in refused}, message


async def send_data_lmtp(
    client: SmtpClient,
    content: bytes,
    accepted: Sequence[str],
    refused: list[SMTPRecipientRefused],
    crlf_only: bool,
) -> str:
    """LMTP (RFC 2033 §4.2): after the dot, one reply per accepted recipient, in RCPT
    order. Refusals are added to ``refused``; when no recipient got the message this
    raises ``SMTPRecipientsRefused`` (so every refusal is weighed, as for RCPT), else it
    returns the first success's text."""
    for i, piece in enumerate(stuffed_pieces(content, crlf_only=crlf_only)):
        if i:
            await client.drain()
        client.write(piece)
    delivered: list[str] = []
    for rcpt in accepted:
        response = await client.reply()
        if response.code == 250:
            delivered.append(response.message)
        else:
            refused.append(SMTPRecipientRefused(response.code, response.message, rcpt))
    if not delivered:
        raise SMTPRecipientsRefused(refused)
    return delivered[0]


async def _lockstep(
    client: SmtpClient, mail_from: str, rcpt_tos: Sequence[str], mail: bytes, rcpts: list[bytes]
) -> list[SMTPRecipientRefused]:
    # One command, one reply: a next hop without PIPELINING may not read ahead.
    if client.rset_due:
        await client.rset()
    response = await client.command(mail[:-2])
    if response.code != 250:
        raise SMTPSenderRefused(response.code, response.message, mail_from)
    client.mail_accepted = True
    refused: list[SMTPRecipientRefused] = []
    for rcpt, line in zip(rcpt_tos, rcpts, strict=True):
        response = await client.command(line[:-2])
        if response.code not in (250, 251):
            refused.append(SMTPRecipientRefused(response.code, response.message, rcpt))
    if len(refused) == len(rcpt_tos):
        raise SMTPRecipientsRefused(refused)
    response = await client.command(b"DATA")
    if response.code != 354:
        raise SMTPDataError(response.code, response.message)
    return refused


async def _pipelined(
    client: SmtpClient,
    mail_from: str,
    rcpt_tos: Sequence[str],
    xforward: list[bytes],
    mail: bytes,
    rcpts: list[bytes],
) -> list[SMTPRecipientRefused]:
    # RFC 2920: the whole envelope in one write, DATA last; then every reply, in order.
    # The pool's RSET between transactions rides along in front.
    rset, client.rset_due = client.rset_due, False
    client.write(b"".join([b"RSET\r\n" if rset else b"", *xforward, mail, *rcpts, b"DATA\r\n"]))
    if rset and (response := await client.reply()).code != 250:
        # A reused connection in an unknown state: nothing delivered, and mail_accepted
        # is still False, so the caller may go again on a fresh connection.
        client.abort()
        raise SMTPServerDisconnected(f"RSET refused: {response.code} {response.message}")
    for _ in xforward:
        response = await client.reply()
        if response.code == 421:
            raise SMTPResponseException(response.code, response.message)
        if response.code // 100 != 2:
            client.abort()
            raise XForwardRefused(response)
    refusal: SMTPResponse | None = None
    response = await client.reply()
    if response.code == 250:
        client.mail_accepted = True
    else:
        refusal = response
        if response.code == 421:
            raise SMTPSenderRefused(response.code, response.message, mail_from)
    refused: list[SMTPRecipientRefused] = []
    for rcpt in rcpt_tos:
        response = await client.reply()
        if response.code not in (250, 251):
            refused.append(SMTPRecipientRefused(response.code, response.message, rcpt))
    start = await client.reply()
    accepted = len(rcpt_tos) - len(refused)
    if start.code == 354 and (refusal is not None or not accepted):
        await _end_unwanted_data(client, accepted)
    if refusal is not None:
        raise SMTPSenderRefused(refusal.code, refusal.message, mail_from)
    if not accepted:
        raise SMTPRecipientsRefused(refused)
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    return refused


async def _end_unwanted_data(client: SmtpClient, accepted: int) -> None:
    # DATA was pipelined and the next hop said 354 although the transaction is dead.
    if accepted:
        # Recipients after a refused MAIL FROM: a dot could deliver an empty message.
        client.abort()
        raise SMTPServerDisconnected("354 to DATA after MAIL FROM was refused")
    # No recipient: a lone dot delivers nothing (RFC 2920 §3.1; Postfix's smtp does
    # the same); its reply says nothing about the message.
    client.write(b".\r\n")
    await client.reply()
