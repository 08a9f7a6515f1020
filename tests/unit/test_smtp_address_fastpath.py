"""GatewaySMTP._getaddr: the regex fast path returns exactly what aiosmtpd's own parser
(the stdlib header parser) returns, for any MAIL/RCPT argument."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.smtp._session import GatewaySMTP


def _front(local_part_limit: int = 0) -> GatewaySMTP:
    # Only _getaddr is exercised: it reads local_part_limit and nothing else.
    front = object.__new__(GatewaySMTP)
    front.local_part_limit = local_part_limit
    return front


def _both(arg: str, limit: int = 0) -> tuple[object, object]:
    front = _front(limit)
    try:
        slow = SMTP._getaddr(front, arg)
    except Exception:  # the stdlib parser crashes on "<" or "a@["; ours: a syntax error
        slow = (None, None)
    return front._getaddr(arg), slow


_PIECES = st.sampled_from(
    ["a", "Z", "0", ".", "..", "@", "<", ">", " ", "-", "+", "_", '"', "\\", "(", ")",
     "[", "]", ":", ",", ";", "=", "\t", "é", "SIZE=10", " BODY=8BITMIME", "\r\n", " (c)",
     "x.y", "@@"]
)  # fmt: skip


@settings(max_examples=1500)
@given(st.lists(_PIECES, max_size=14).map("".join), st.sampled_from([0, 4, 64]))
@example("<alice@example.net>", 0)
@example("<alice@example.net> SIZE=4096 BODY=8BITMIME", 0)
@example("<a..b@example.net>", 0)
@example("<.a@example.net>", 0)
@example("<a@example..net>", 0)
@example("<a@-x.net>", 0)
@example("<a@[127.0.0.1]>", 0)
@example('<"a b"@example.net>', 0)
@example("<@relay.example:a@example.net>", 0)
@example("<>", 0)
@example("<", 0)
@example("a@[", 0)
@example("<longlocalpart@example.net>", 4)
@example("<a@b>x", 0)
def test_fast_path_answers_exactly_like_aiosmtpd(arg: str, limit: int) -> None:
    fast, slow = _both(arg, limit)
    assert fast == slow


@pytest.mark.parametrize(
    "arg", ["<alice@example.net>", "<first.last+tag@mail.example.co.uk> SIZE=1"]
)
def test_common_addresses_take_the_fast_path(arg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: SMTP, arg: str) -> tuple[str | None, str | None]:
        raise AssertionError("the stdlib parser was called")

    monkeypatch.setattr(SMTP, "_getaddr", refuse)
    address, rest = _front()._getaddr(arg)
    assert address is not None and arg.startswith(f"<{address}>")
    assert rest == arg[len(address) + 2 :].lstrip()
