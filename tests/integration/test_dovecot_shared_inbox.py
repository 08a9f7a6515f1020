"""The shared-inbox recipe end to end: mail through the gateway's SMTP front, classified
by the in-process emulator model, routed by the shipped shared-inbox-triage rules,
delivered over LMTP into a private Dovecot configured with deploy/dovecot/ (conf snippet
and Sieve script); then each mailbox is read over IMAP (imaplib): right folder, right
flags."""

from __future__ import annotations

import asyncio
import imaplib
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from gateway.config import build_config
from gateway.pipeline import build_processor

from .dovecot_harness import PASSWORD, DovecotInstance, dovecot_available, running_dovecot
from .smtp_front_support import running_server, smtp_config

pytestmark = pytest.mark.skipif(not dovecot_available(), reason="Dovecot is not installed")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rulesets" / "shared-inbox-triage"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotInstance]:
    with running_dovecot() as instance:
        yield instance


def mailboxes(dovecot: DovecotInstance, user: str) -> dict[str, list[set[str]]]:
    """Folder -> the flags of each message in it, for ``user``."""
    imap = imaplib.IMAP4("127.0.0.1", dovecot.imap_port)
    try:
        imap.login(user, PASSWORD)
        _, listing = imap.list()
        out: dict[str, list[set[str]]] = {}
        for line in listing:
            assert isinstance(line, bytes)
            name = line.decode().rsplit(' "." ', 1)[1].strip('"')
            _, count = imap.select(name, readonly=True)
            flags: list[set[str]] = []
            if int(count[0] or 0):
                _, data = imap.fetch("1:*", "(FLAGS)")
                for item in data:
                    assert isinstance(item, bytes)
                    inner = item.decode().split("FLAGS (", 1)[1].split(")", 1)[0]
                    flags.append(set(inner.split()) - {"\\Recent"})
            out[name] = flags
        return out
    finally:
        imap.logout()


async def test_each_kind_of_mail_lands_in_its_folder_with_its_flags(
    dovecot: DovecotInstance, tmp_path: Path
) -> None:
    """complaint -> complaints, flagged (and the copy to quality@ too); urgent incident
    -> it, flagged; newsletter -> notifications, not flagged; a mail the model is unsure
    about -> review@'s human-review folder, and nothing of it in team@'s mailbox."""
    config = build_config(
        {
            "smtp": {"hostname": "gw.test"},
            "downstream": {"url": dovecot.lmtp_url, "tls": "none", "timeout": 10},
            "classifier": {"provider": "emulator"},
            "rules": {"files": ["rules/shared-inbox-triage.yaml"]},
        },
        file=None,
        env={},
    )
    pipeline = build_processor(config)
    async with running_server(pipeline, smtp_config()) as server:
        for case in (
            "angry-complaint",
            "urgent-incident",
            "newsletter-low",
            "low-confidence-review",
        ):
            raw = (FIXTURES / case / "message.eml").read_bytes()
            errors, reply = await aiosmtplib.send(
                raw,
                sender="customer@example.net",
                recipients=["team@example.com"],
                hostname="127.0.0.1",
                port=server.port,
                start_tls=False,
            )
            assert not errors and reply.startswith("2.0.0"), (case, reply)
    await pipeline.aclose()

    team = await asyncio.to_thread(mailboxes, dovecot, "team")
    assert team["complaints"] == [{"\\Flagged"}]
    assert team["it"] == [{"\\Flagged"}]
    assert team["notifications"] == [set()]
    assert team["INBOX"] == []
    assert "human-review" not in team
    quality = await asyncio.to_thread(mailboxes, dovecot, "quality")
    assert quality["complaints"] == [{"\\Flagged"}]
    review = await asyncio.to_thread(mailboxes, dovecot, "review")
    assert review["human-review"] == [set()]
    assert "stored mail into mailbox 'complaints'" in dovecot.log
