"""Property tests: whatever the bytes, parse_message/build_document give a valid document."""

from __future__ import annotations

import base64
import contextlib
import quopri
import warnings
from collections.abc import Callable
from email.header import Header
from email.message import Message

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from gateway.documents import MAX_ATTACHMENTS, RawEmailDocument
from gateway.mail import build_document, parse_message
from tests.unit.test_payload import check_document

validate_predict_raw_emails: Callable[..., None] | None
try:
    from gateway.emulator import validate_predict_raw_emails
except ImportError:  # pragma: no cover  # the emulator is another engineer's module
    validate_predict_raw_emails = None

SETTINGS = settings(
    max_examples=200,
    deadline=None,  # a shared 2-core machine: wall-clock deadlines would be flaky
    # No "explain" phase: its line tracer makes shrinking a MIME tree take minutes.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHARSETS = [
    "utf-8", "iso-8859-1", "windows-1252", "iso-2022-jp", "shift_jis", "gb2312", "koi8-r",
    "us-ascii", "utf-16", "x-bogus-charset", "", "base64", "unicode-escape",
]  # fmt: skip
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "binary", "bogus"]
TYPES = [
    "application/pdf", "application/octet-stream", "image/png", "text/calendar", "text/csv",
    "text/plain", "text/html", "message/delivery-status", "x/y", "multipart/mixed",
]  # fmt: skip

# Text with the characters mail gets wrong: non-ASCII, controls, NUL, CR/LF, surrogates.
nasty_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=["Cs"]) | st.sampled_from("\r\n\x00\t=?"),
    max_size=60,
)
header_names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
).filter(lambda name: ":" not in name)


def final_check(raw: bytes) -> RawEmailDocument:
    """Parse and build; assert the document is valid (ours and the emulator's checks)."""
    parsed = parse_message(raw)
    doc = build_document(
        parsed, raw, mailbox="inbox@acme.example", user_properties={"string:Source": "hypothesis"}
    )
    check_document(doc)
    if validate_predict_raw_emails is not None:
        validate_predict_raw_emails({"documents": [doc], "transform_tag": "generic.0.CONVKER5"})
    attachments = doc["raw_email"].get("attachments", [])
    assert len(attachments) == min(MAX_ATTACHMENTS, len(parsed.attachments))
    assert doc["user_properties"]["number:Attachment Count"] == len(parsed.attachments)
    return doc


def encode_text(text: str, charset: str) -> bytes:
    try:
        return text.encode(charset or "utf-8", "replace")
    except (LookupError, UnicodeError):
        return text.encode("utf-8", "surrogatepass")


def transfer_encode(data: bytes, cte: str) -> str:
    if cte == "base64":
        return base64.encodebytes(data).decode("ascii")
    if cte == "quoted-printable":
        return quopri.encodestring(data).decode("ascii")
    return data.decode("ascii", "surrogateescape")


@st.composite
def headers(draw: st.DrawFn, message: Message) -> None:
    """Random extra headers: random names, values with non-ASCII and control characters."""
    for _ in range(draw(st.integers(0, 4))):
        name = draw(header_names)
        value = draw(nasty_text)
        if draw(st.booleans()):
            charset = draw(st.sampled_from(["utf-8", "iso-8859-1", "shift_jis"]))
            with contextlib.suppress(Exception):  # some text has no form in that charset
                value = Header(value, charset).encode()
        message[name] = value


@st.composite
def leaves(draw: st.DrawFn) -> Message:
    part = Message()
    ctype = draw(st.sampled_from(["text/plain", "text/html", *TYPES]))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS))
    if ctype.startswith("text/"):
        data = encode_text(draw(nasty_text), charset)
    else:
        data = draw(st.binary(max_size=200))
    part["Content-Type"] = ctype + (f'; charset="{charset}"' if charset else "")
    part["Content-Transfer-Encoding"] = cte
    if draw(st.booleans()):
        filename = draw(nasty_text)
        style = draw(st.sampled_from(["rfc2231", "rfc2047", "raw"]))
        disposition = draw(st.sampled_from(["attachment", "inline", "bogus"]))
        if style == "rfc2231":
            part.add_header("Content-Disposition", disposition, filename=("utf-8", "", filename))
        elif style == "rfc2047":
            part.add_header(
                "Content-Disposition", disposition, filename=Header(filename, "utf-8").encode()
            )
        else:
            part["Content-Disposition"] = f'{disposition}; filename="{filename}"'
    headers_strategy = headers(part)
    draw(headers_strategy)
    part.set_payload(transfer_encode(data, cte))
    return part


def multipart(subtype: str, children: list[Message], boundary: str | None) -> Message:
    message = Message()
    message["Content-Type"] = f"multipart/{subtype}" + (
        f'; boundary="{boundary}"' if boundary else ""
    )
    for child in children:
        message.attach(child)
    if not children:
        message.set_payload([])
    return message


def rfc822(inner: Message) -> Message:
    message = Message()
    message["Content-Type"] = "message/rfc822"
    message.set_payload([inner])
    return message


trees = st.recursive(
    leaves(),
    lambda children: (
        st.builds(
            multipart,
            st.sampled_from(["mixed", "alternative", "related", "report", "digest"]),
            st.lists(children, max_size=4),
            st.one_of(
                st.none(),
                st.text(alphabet="abcdefXYZ0123456789'()+_,-./:=?", min_size=1, max_size=30),
            ),
        )
        | st.builds(rfc822, children)
    ),
    max_leaves=8,
)


def serialize(message: Message) -> bytes:
    """Write the tree out as is: header values unchecked, so junk reaches the parser.

    (The stdlib generator refuses some of the junk, e.g. a text part labelled 'base64'.)
    """
    lines = [f"{name}: {value}" for name, value in message.raw_items()]
    head = "\n".join(lines).encode("utf-8", "surrogateescape") + b"\n\n"
    with warnings.catch_warnings():
        # The stdlib decodes a str payload with its charset here; "unicode-escape" over a
        # stray backslash warns. This only writes the test's input: the gateway's own
        # reading refuses that codec (gateway/mail/_mimetext.py).
        warnings.simplefilter("ignore", DeprecationWarning)
        payload = message.get_payload()
    if isinstance(payload, list):
        if message.get_content_maintype() == "message":
            return head + b"".join(serialize(m) for m in payload if isinstance(m, Message))
        boundary = (message.get_boundary() or "").encode("utf-8", "surrogateescape")
        children = [child for child in payload if isinstance(child, Message)]
        parts = [b"--" + boundary + b"\n" + serialize(child) + b"\n" for child in children]
        return head + b"".join(parts) + b"--" + boundary + b"--\n"
    return head + str(payload or "").encode("utf-8", "surrogateescape")


@st.composite
def mime_messages(draw: st.DrawFn) -> bytes:
    """A random MIME tree from the stdlib email package, with random top-level headers."""
    root = draw(trees)
    for name in ("From", "To", "Subject", "Message-ID", "Date"):
        if draw(st.booleans()):
            root[name] = draw(nasty_text)
    draw(headers(root))
    raw = serialize(root)
    if draw(st.booleans()):
        raw = raw.replace(b"\n", b"\r\n")
    return raw


@SETTINGS
@given(st.binary(max_size=4096))
def test_random_bytes_always_give_a_valid_document(raw: bytes) -> None:
    """Any byte string parses and builds into a valid, stable document."""
    final_check(raw)


@SETTINGS
@given(st.binary(max_size=512), st.binary(max_size=2048))
def test_random_header_block_and_body_always_give_a_valid_document(
    head: bytes, body: bytes
) -> None:
    """Random header bytes before a blank line, then random body bytes: still valid."""
    final_check(b"Subject: x\r\n" + head + b"\r\n\r\n" + body)


@settings(SETTINGS, max_examples=150)
@given(mime_messages())
def test_random_mime_trees_always_give_a_valid_document(raw: bytes) -> None:
    """Random MIME trees (nesting, charsets, encodings, names, junk headers) give valid docs."""
    final_check(raw)


@SETTINGS
@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from(["string:Mailbox", "number:Attachment Count", "number:Size KB"]),
            st.builds(
                lambda kind, name: f"{kind}:{name}",
                st.sampled_from(["string", "number", "bogus", ""]),
                nasty_text,
            ),
            nasty_text,
        ),
        st.one_of(nasty_text, st.floats(), st.integers(), st.booleans()),
        max_size=8,
    ),
    st.one_of(st.none(), nasty_text),
)
def test_any_user_properties_give_valid_ones(
    properties: dict[str, object], mailbox: str | None
) -> None:
    """Whatever properties and mailbox a caller passes, the document's properties are valid."""
    raw = b"From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n"
    doc = build_document(parse_message(raw), raw, user_properties=properties, mailbox=mailbox)  # type: ignore[arg-type]
    check_document(doc)
    if validate_predict_raw_emails is not None:
        validate_predict_raw_emails({"documents": [doc], "transform_tag": "generic.0.CONVKER5"})
