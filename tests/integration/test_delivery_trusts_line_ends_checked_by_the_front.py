"""Delivery does not check line endings again for content the SMTP front already checked
(``crlf_only``): the check is half the CPU of each 256 KB piece of a big message. Work is
counted (calls of the check), never timed; other callers keep the check."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.deliver import _smtp_data as smtp_data
from gateway.deliver._delivery import SmtpDelivery
from gateway.deliver._smtp_data import CHUNK, stuffed_pieces
from gateway.mail import _lineends as lineends

from .ops_support import running_gateway
from .pipeline_support import mail
from .pipelining_sink import running

BIG = b"".join(b".line %07d of a big message\r\n" % i for i in range(100_000))  # ~3 MB
CRLF_FRAGMENTS = st.sampled_from([b"\r\n", b".", b"..", b"a", b"\r\n.\r\n", b" ", b"\x00"])


class _Counted:
    """``find_bare_line_ending`` as it is, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, content: bytes, start: int = 0, end: int | None = None) -> str | None:
        self.calls += 1
        return lineends.find_bare_line_ending(content, start, end)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> _Counted:
    counted = _Counted()
    monkeypatch.setattr(smtp_data, "find_bare_line_ending", counted)
    return counted


def test_content_of_unknown_origin_is_checked_once_per_piece(checks: _Counted) -> None:
    """Without ``crlf_only`` every piece of a 3 MB message is checked."""
    pieces = list(stuffed_pieces(BIG))
    assert len(pieces) == len(BIG) // CHUNK + 1
    assert checks.calls == len(pieces)


def test_content_the_front_checked_is_not_checked_again(checks: _Counted) -> None:
    """With ``crlf_only`` no piece is checked, and the pieces are the same bytes."""
    trusted = list(stuffed_pieces(BIG, crlf_only=True))
    assert checks.calls == 0
    assert trusted == list(stuffed_pieces(BIG))


@settings(max_examples=300, deadline=None)
@given(st.lists(CRLF_FRAGMENTS, max_size=60).map(b"".join), st.integers(1, 40))
def test_crlf_only_content_goes_out_the_same_with_or_without_the_check(
    content: bytes, size: int
) -> None:
    """For content without a bare CR or LF, skipping the check changes no byte."""
    expected = b"".join(stuffed_pieces(content, size))
    assert b"".join(stuffed_pieces(content, size, crlf_only=True)) == expected


async def test_a_delivery_vouched_crlf_only_arrives_intact_without_a_check(
    checks: _Counted,
) -> None:
    """Through ``SmtpDelivery`` over a real socket: ``crlf_only=True`` makes no check and
    the next hop gets the message byte for byte; a delivery without it checks every piece."""
    async with running() as sink:
        d = SmtpDelivery("127.0.0.1", sink.port, timeout=20.0, local_hostname="gw.test")
        trusted = await d.deliver("a@example.com", ["b@x.test"], BIG, crlf_only=True)
        trusted_checks = checks.calls
        other = await d.deliver("a@example.com", ["c@x.test"], BIG)
        await d.aclose()
    assert trusted.delivered and other.delivered
    assert trusted_checks == 0
    assert checks.calls == len(BIG) // CHUNK + 1
    assert [m.content for m in sink.messages] == [BIG, BIG]


async def test_bare_line_ends_from_other_callers_are_still_repaired() -> None:
    """A caller that does not vouch (the default) still gets bare LF/CR sent as CRLF."""
    async with running() as sink:
        d = SmtpDelivery("127.0.0.1", sink.port, timeout=20.0, local_hostname="gw.test")
        result = await d.deliver("a@example.com", ["b@x.test"], b"a: b\n\nline\rmore\n")
        await d.aclose()
    assert result.delivered
    assert [m.content for m in sink.messages] == [b"a: b\r\n\r\nline\r\nmore\r\n"]


async def test_the_gateway_relays_what_its_front_received_without_checking_it_again(
    checks: _Counted, tmp_path: Path
) -> None:
    """Through SMTP: the pipeline vouches for content from its own front (``crlf_only``),
    so the relay makes no check, and what reaches the next hop, our header fields on top
    included, still has CRLF line ends only."""
    body = b"".join(b"line %07d, please pay the invoice\r\n" % i for i in range(40_000))
    async with running_gateway(tmp_path) as gw:
        code, _ = await gw.send(mail("Invoice INV-12345", "x").replace(b"x\r\n", body))
    assert code == 250
    assert checks.calls == 0
    (received,) = gw.received
    assert received.content.endswith(body)
    assert lineends.find_bare_line_ending(received.content) is None
    assert b"\r\nX-CM-Status: classified" in b"\r\n" + received.content
