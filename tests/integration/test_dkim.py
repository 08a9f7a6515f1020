"""DKIM signatures survive the gateway: it prepends fields and passes the rest byte for byte.

The fixtures are signed with a throw-away key (tests/fixtures/dkim/make_fixture.py); the
public key is served to dkim.verify through ``dnsfunc``, so no DNS is involved.
"""

from __future__ import annotations

from pathlib import Path

import dkim
import pytest

from gateway.mail import header_fields
from gateway.pipeline import build_processor
from gateway.testing import running_sink

from .pipeline_support import inbound, make_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dkim"
PUBLIC_KEY = (FIXTURES / "test.pub.b64").read_bytes().strip()

# Adds headers and changes recipients, but leaves the (signed) Subject alone.
NEUTRAL_RULES = """
rules:
  - name: finance-queue
    when: { label: "Finance" }
    actions:
      - add_header: { X-Triage-Queue: "finance ({top_label})" }
      - bcc: [archive@example.com]
"""
PREFIX_RULES = """
rules:
  - name: tag-finance
    when: { label: "Finance" }
    actions:
      - prefix_subject: "[Finance] "
"""


def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
    """The TXT record of test._domainkey.example.com, and nothing else."""
    if name == b"test._domainkey.example.com.":
        return b"v=DKIM1; k=rsa; p=" + PUBLIC_KEY
    return None


def verify(message: bytes) -> bool:
    return bool(dkim.verify(message, dnsfunc=dnsfunc))


@pytest.mark.parametrize("fixture", ["signed-simple.eml", "signed-relaxed.eml"])
def test_fixture_verifies_as_committed(fixture: str) -> None:
    """The committed fixtures verify, and a one-byte body change breaks them (control)."""
    signed = (FIXTURES / fixture).read_bytes()
    assert verify(signed)
    assert not verify(
        signed.replace(b"invoice INV-20240117 attached", b"invoice INV-20240118 attached")
    )


@pytest.mark.parametrize("fixture", ["signed-simple.eml", "signed-relaxed.eml"])
@pytest.mark.parametrize("trusted", [True, False])
async def test_signature_still_verifies_after_the_gateway(
    tmp_path: Path, fixture: str, trusted: bool
) -> None:
    """Classified, headers added, recipients changed: the signature still verifies."""
    signed = (FIXTURES / fixture).read_bytes()
    with running_sink() as sink:
        pipeline = build_processor(
            make_config(tmp_path, downstream=sink.url, rules_yaml=NEUTRAL_RULES)
        )
        reply = await pipeline.process(inbound(signed, trusted=trusted))
        await pipeline.aclose()
    assert reply.code == 250
    (got,) = sink.received
    assert got.rcpt_tos == ("support@example.com", "archive@example.com")
    names = [name for name, _ in header_fields(got.content)]
    assert {"Received", "X-CM-Labels", "X-CM-Status", "X-CM-Rules", "X-Triage-Queue"} <= set(names)
    assert got.content.endswith(signed)
    assert verify(got.content)


async def test_signature_still_verifies_in_a_maildir(tmp_path: Path) -> None:
    """The same through maildir:// delivery."""
    signed = (FIXTURES / "signed-simple.eml").read_bytes()
    maildir = tmp_path / "maildir"
    pipeline = build_processor(
        make_config(tmp_path, downstream=f"maildir://{maildir}", rules_yaml=NEUTRAL_RULES)
    )
    reply = await pipeline.process(inbound(signed))
    await pipeline.aclose()
    assert reply.code == 250
    (stored,) = (maildir / "new").iterdir()
    assert verify(stored.read_bytes())


async def test_subject_prefix_breaks_a_signature_over_the_subject(tmp_path: Path) -> None:
    """Control: prefix_subject rewrites a signed field, so verification must fail."""
    signed = (FIXTURES / "signed-relaxed.eml").read_bytes()
    with running_sink() as sink:
        pipeline = build_processor(
            make_config(tmp_path, downstream=sink.url, rules_yaml=PREFIX_RULES)
        )
        reply = await pipeline.process(inbound(signed))
        await pipeline.aclose()
    assert reply.code == 250
    subject = [v for n, v in header_fields(sink.received[0].content) if n == "Subject"]
    assert subject[0].startswith("[Finance] ")
    assert not verify(sink.received[0].content)
