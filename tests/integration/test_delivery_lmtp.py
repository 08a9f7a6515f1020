"""LMTP delivery (``lmtp://`` and ``lmtp+unix://``) against a scripted LMTP server: one
reply per recipient after the dot, and what our client hears for each mix of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import replies
from gateway.config import NextHopConfig, embedded_default
from gateway.deliver import Delivery, make_delivery
from gateway.replies import Reply

from .lmtp_support import LmtpServer, running_lmtp

pytestmark = pytest.mark.both_loops

CONTENT = b"From: a@example.com\r\nSubject: lmtp\r\n\r\n.dot line\r\nbody\r\n"
RCPTS = ["one@example.com", "two@example.com"]


def lmtp(srv: LmtpServer) -> Delivery:
    return make_delivery(embedded_default(env={}), NextHopConfig(url=srv.url, timeout=10))


async def test_lmtp_over_tcp_delivers_to_every_recipient_and_reuses_the_connection() -> None:
    """All recipients 250 after the dot: 250; a second message on the same connection
    reads its own replies (none left over from the first)."""
    with running_lmtp() as srv:
        d = lmtp(srv)
        try:
            first = await d.deliver("a@example.com", RCPTS, CONTENT)
            second = await d.deliver("a@example.com", RCPTS[:1], CONTENT)
        finally:
            await d.aclose()
    assert first.delivered and second.delivered
    assert first.reply.code == 250 and "one@example.com" in first.reply.text
    assert [r for r, _ in srv.delivered] == [*RCPTS, RCPTS[0]]
    assert srv.delivered[0][1] == CONTENT
    assert srv.connections == 1
    assert "LHLO" in srv.commands and "EHLO" not in srv.commands
    assert d.description == srv.url


async def test_lmtp_over_a_unix_socket(tmp_path: Path) -> None:
    """lmtp+unix:///path: the same exchange over the socket."""
    with running_lmtp(tmp_path) as srv:
        d = lmtp(srv)
        try:
            result = await d.deliver("a@example.com", RCPTS, CONTENT)
        finally:
            await d.aclose()
    assert result.delivered
    assert d.description == f"lmtp+unix://{tmp_path}/lmtp"
    assert len(srv.delivered) == 2


@pytest.mark.parametrize(
    ("after_data", "expected"),
    [
        # One mailbox over quota for now: the whole message is retried (the other
        # recipient may get it twice: documented).
        ({"two@example.com": "452 4.2.2 Mailbox full"}, replies.DOWNSTREAM_PARTIAL),
        # One refused for good, one delivered: still a retry of the whole message.
        ({"two@example.com": "550 5.1.1 No such user"}, replies.DOWNSTREAM_PARTIAL),
        # Nobody got it, one only for now: 451.
        (
            {"one@example.com": "550 5.1.1 No such user", "two@example.com": "451 4.3.0 Busy"},
            replies.DOWNSTREAM_TEMPFAIL,
        ),
        # Every recipient refused for good: the next hop's 5xx.
        (
            {"one@example.com": "550 5.1.1 No such user", "two@example.com": "552 5.2.2 Full"},
            Reply(550, "5.1.1", "No such user"),
        ),
    ],
)
async def test_per_recipient_replies_map_to_one_reply_for_our_client(
    after_data: dict[str, str], expected: Reply
) -> None:
    """Any temporary failure -> 451 and the message retried whole; every recipient
    permanently refused -> the next hop's 5xx."""
    with running_lmtp() as srv:
        srv.after_data.update(after_data)
        d = lmtp(srv)
        try:
            result = await d.deliver("a@example.com", RCPTS, CONTENT)
            # The connection is not reused after a refusal, and the next one works.
            srv.after_data.clear()
            again = await d.deliver("a@example.com", RCPTS, CONTENT)
        finally:
            await d.aclose()
    assert result.reply == expected
    assert set(result.refused) == set(after_data)
    assert again.delivered
