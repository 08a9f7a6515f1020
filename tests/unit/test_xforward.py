"""XFORWARD encoding and command building (gateway.deliver._xforward), without sockets."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from gateway.deliver import XForward, XForwardState
from gateway.deliver import _xforward as xforward
from gateway.deliver._xforward import ATTRIBUTES, commands, xtext_decode

LONG = XForward(
    name="n" * 255,
    addr="2001:db8::7",
    port=65535,
    proto="P" * 64,
    helo="h" * 255,
    ident="i" * 255,
    source="LOCAL",
)


def test_long_attributes_are_split_over_lines_within_the_smtp_command_limit() -> None:
    """Every attribute is sent, each line stays <= 510 octets (512 with CRLF)."""
    lines = commands(LONG, ATTRIBUTES)
    assert len(lines) > 1
    assert all(len(line) <= 510 and line.startswith("XFORWARD ") for line in lines)
    sent = [word.split("=", 1)[0] for line in lines for word in line.split()[1:]]
    assert sent == list(ATTRIBUTES)


def test_sent_values_decode_back_to_what_was_forwarded() -> None:
    """xtext: '+' and '=' are escaped on the way out and come back unchanged through
    the receiving side's parser."""
    forwarded = XForward(helo="a+b=c", ident="Q+1")
    (line,) = commands(forwarded, ATTRIBUTES)
    assert line == "XFORWARD HELO=a+2Bb+3Dc IDENT=Q+2B1"
    state = XForwardState()
    state.update(line.split(" ", 1)[1])
    assert state.current == forwarded
    assert xtext_decode("a+2Bb") == "a+b"


def test_an_attribute_the_next_hop_did_not_offer_is_never_sent() -> None:
    """Only offered names (case-insensitive) go out; nothing offered, no command."""
    assert commands(LONG, ["addr", "PORT"]) == ["XFORWARD ADDR=2001:db8::7 PORT=65535"]
    assert commands(LONG, []) == []
    assert commands(XForward(), ATTRIBUTES) == []


def _xtext_encode_per_character(text: str) -> str:
    # xtext_encode without its fast path: every character looked at.
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else f"+{b:02X}"
        for c in text
        for b in c.encode("utf-8")
    )


@given(
    st.text(
        alphabet=st.sampled_from(["a", "Z", "~", "!", " ", "+", "=", "\x7f", "\t", "é", "\u2028"])
    )
)
def test_xtext_encode_equals_encoding_each_character(text: str) -> None:
    assert xforward.xtext_encode(text) == _xtext_encode_per_character(text)


@given(
    st.builds(
        XForward,
        name=st.none() | st.sampled_from(["", "mx.example", "a b"]),
        addr=st.none() | st.sampled_from(["192.0.2.1", "2001:db8::1"]),
        port=st.none() | st.integers(0, 65535),
        proto=st.none() | st.sampled_from(["ESMTP", ""]),
        helo=st.none() | st.text(max_size=5),
        ident=st.none() | st.text(max_size=5),
        source=st.none() | st.sampled_from(["LOCAL", "REMOTE"]),
    )
)
def test_items_lists_the_available_fields_in_ehlo_order(forwarded: XForward) -> None:
    values = dataclasses.astuple(forwarded)
    expected = [(attr, str(value)) for attr, value in zip(ATTRIBUTES, values, strict=True) if value]
    assert forwarded.items() == expected


def test_a_refused_value_is_refused_every_time() -> None:
    session = {"port": None, "proto": None, "helo": None, "ident": None, "source": None}
    for _ in range(2):
        assert xforward.from_session(addr="999.1.1.1", **session).addr is None
        assert xforward.from_session(addr="192.0.2.1", **session).addr == "192.0.2.1"
