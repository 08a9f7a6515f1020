"""XFORWARD: who the original client of a message was, passed along a content-filter
chain so that every hop can log it (Postfix's XFORWARD_README).

    XFORWARD NAME=mx.example.org ADDR=192.0.2.7 PORT=40512 PROTO=ESMTP
    XFORWARD HELO=mx.example.org IDENT=4Xq2Ld0abc SOURCE=REMOTE

Receiving (server.py): ``XForwardState.update(arg)`` validates one command's arguments
and merges them into the session's attributes; the first command of a transaction sets
every attribute to unavailable first, a later one overwrites only what it names. The
state is reset at the end of each transaction (DATA done, RSET, HELO/EHLO), as Postfix's
smtpd does, so one message's origin never leaks into the next on a reused connection.

Sending (smtp_pool.py): ``commands(forwarded, offered)`` turns attributes into XFORWARD
command lines, only the attributes the next hop offered, xtext-encoded, each line within
SMTP's 512-octet command limit.

The attributes are for logging only: relay permission and header trust still follow the
real peer's address.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway import replies
from gateway.replies import Reply

__all__ = [
    "ATTRIBUTES",
    "EHLO_KEYWORD",
    "XForward",
    "XForwardError",
    "XForwardState",
    "commands",
    "from_session",
    "parse_arguments",
    "xtext_decode",
    "xtext_encode",
]

# EHLO order as Postfix's smtpd prints them; SOURCE is Postfix's name for the rewrite
# context (LOCAL/REMOTE), IDENT the upstream queue id.
ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
EHLO_KEYWORD = "XFORWARD " + " ".join(ATTRIBUTES)

_MAX_VALUE = 255  # XFORWARD_README note 1, before decoding
_MAX_PROTO = 64
_MAX_LINE = 510  # RFC 5321 §4.5.3.1.4: 512 octets with the CRLF
_UNAVAILABLE = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})
# After decoding: no control characters, whitespace or non-ASCII (README note 1).
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9._-]+")
_XTEXT_ESCAPE = re.compile(r"\+([0-9A-Fa-f]{2})")  # RFC 3461 says upper case; be lenient


class XForwardError(ValueError):
    """An XFORWARD command that is refused; ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class XForward:
    """Client attributes forwarded by the previous hop; None = unavailable."""

    name: str | None = None
    addr: str | None = None
    port: int | None = None
    proto: str | None = None
    helo: str | None = None
    ident: str | None = None
    source: str | None = None  # LOCAL or REMOTE

    def items(self) -> list[tuple[str, str]]:
        """The available attributes as (XFORWARD name, value), in EHLO order."""
        # Not dataclasses.astuple: it deep-copies every field, a cost per relayed message.
        values = (self.name, self.addr, self.port, self.proto, self.helo, self.ident, self.source)
        return [(attr, str(value)) for attr, value in zip(ATTRIBUTES, values, strict=True) if value]


def xtext_decode(text: str) -> str:
    """RFC 3461 §4 xtext to text (``+2B`` -> ``+``); ValueError when malformed."""
    if "+" not in text:
        return text
    if text.count("+") != len(_XTEXT_ESCAPE.findall(text)):
        raise ValueError("bad xtext escape")
    return _XTEXT_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    """Text to xtext: ``+``, ``=`` and anything outside ``!``..``~`` as ``+XX``."""
    # Printable ASCII without space, + and =: nothing to encode (addresses, names and
    # queue ids nearly always; a character generator per call was the cost).
    if (
        text.isascii()
        and text.isprintable()
        and " " not in text
        and "+" not in text
        and "=" not in text
    ):
        return text
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else f"+{b:02X}"
        for c in text
        for b in c.encode("utf-8")
    )


def _value(attr: str, raw: str) -> str | int | None:
    if len(raw) > _MAX_VALUE:
        raise XForwardError(replies.xforward_bad_value(attr))
    try:
        value = xtext_decode(raw)
    except ValueError:
        raise XForwardError(replies.xforward_bad_value(attr)) from None
    if value.upper() in _UNAVAILABLE:
        return None
    # CR, LF, NUL and every other control or non-ASCII character end here: the values
    # go into log lines and, re-encoded, to the next hop.
    if not _PRINTABLE.fullmatch(value):
        raise XForwardError(replies.xforward_bad_value(attr))
    return _checked(attr, value)


# A pure function of its arguments (a refusal raises, and is not cached); the same peer
# address, port and HELO come back for every message of a session, and ip_address()
# parsing them was most of from_session's time.
@functools.lru_cache(maxsize=1024)
def _checked(attr: str, value: str) -> str | int:
    if attr == "NAME":
        if _HOSTNAME.fullmatch(value):
            return value
    elif attr == "ADDR":
        bare = value[5:] if value[:5].upper() == "IPV6:" else value
        try:
            return str(ipaddress.ip_address(bare))
        except ValueError:
            pass
    elif attr == "PORT":
        if value.isdigit() and len(value) <= 5 and int(value) <= 65535:
            return int(value)
    elif attr == "PROTO":
        if len(value) <= _MAX_PROTO:
            return value
    elif attr == "SOURCE":
        if value.upper() in ("LOCAL", "REMOTE"):
            return value.upper()
    else:  # HELO, IDENT: any printable text
        return value
    raise XForwardError(replies.xforward_bad_value(attr))


def _build(values: Mapping[str, str | int | None]) -> XForward:
    def text(key: str) -> str | None:
        value = values.get(key)
        return None if value is None else str(value)

    port = values.get("port")
    return XForward(
        name=text("name"),
        addr=text("addr"),
        port=port if isinstance(port, int) else None,
        proto=text("proto"),
        helo=text("helo"),
        ident=text("ident"),
        source=text("source"),
    )


def parse_arguments(arg: str | None) -> dict[str, str | int | None]:
    """``NAME=... ADDR=...`` -> {field: value}; XForwardError when anything is wrong
    (the whole command is then refused, nothing of it applied)."""
    words = (arg or "").split()
    if not words:
        raise XForwardError(replies.XFORWARD_SYNTAX)
    updates: dict[str, str | int | None] = {}
    for word in words:
        attr, equals, raw = word.partition("=")
        if not equals or not raw:
            raise XForwardError(replies.XFORWARD_SYNTAX)
        attr = attr.upper()
        if attr not in ATTRIBUTES:
            raise XForwardError(replies.XFORWARD_BAD_ATTRIBUTE)
        updates[attr.lower()] = _value(attr, raw)
    return updates


class XForwardState:
    """One SMTP session's forwarded attributes for the current transaction."""

    def __init__(self) -> None:
        self.current: XForward | None = None

    def update(self, arg: str | None) -> None:
        """Apply one XFORWARD command; raises XForwardError (state unchanged)."""
        updates = parse_arguments(arg)
        # README: the first command presets every attribute to unavailable; later ones
        # overwrite only the attributes they name.
        self.current = _build({**dataclasses.asdict(self.current or XForward()), **updates})

    def reset(self) -> None:
        """End of a transaction: forget everything."""
        self.current = None


def from_session(
    *,
    addr: str | None,
    port: int | None,
    proto: str | None,
    helo: str | None,
    ident: str | None,
    source: str | None,
) -> XForward:
    """Attributes of our own SMTP session (when no XFORWARD came in), each dropped when
    it is not a value a receiver would accept (e.g. a HELO with spaces)."""
    given = {"addr": addr, "port": port, "proto": proto, "helo": helo}
    given |= {"ident": ident, "source": source}
    kept: dict[str, str | int] = {}
    for key, value in given.items():
        if value is None:
            continue
        text = str(value)
        if len(text) > _MAX_VALUE or not _PRINTABLE.fullmatch(text):
            continue
        try:
            kept[key] = _checked(key.upper(), text)
        except XForwardError:
            continue
    return _build(kept)


def commands(forwarded: XForward, offered: Iterable[str]) -> list[str]:
    """XFORWARD command lines for the attributes in ``forwarded`` that the next hop
    ``offered`` in its EHLO; several lines when one would pass 512 octets."""
    wanted = {word.upper() for word in offered}
    lines: list[str] = []
    line = ""
    for attr, value in forwarded.items():
        if attr not in wanted:
            continue
        encoded = xtext_encode(value)
        if len(encoded) > _MAX_VALUE:
            continue  # README note 1: the receiver would refuse the whole command
        word = f" {attr}={encoded}"
        if line and len(line) + len(word) > _MAX_LINE:
            lines.append(line)
            line = ""
        line = (line or "XFORWARD") + word
    if line:
        lines.append(line)
    return lines
